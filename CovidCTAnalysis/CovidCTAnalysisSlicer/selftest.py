"""The module's self-test (CovidCTAnalysisTest) and its helpers, kept here so pytest runs them too.

``runSelfTest`` runs what the installation allows and says what it skipped:
1. always: a phantom into the scene and back (volume node <-> SimpleITK, truth as a segmentation);
2. when the first Analyze's packages (and torch) are installed: the threshold method end to end;
3. when trained models are installed too: the model method end to end, and a re-run replaces the results.
So it passes on a fresh install (the extension build machines) with no models and no extra packages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from CovidCTAnalysisSlicer.models import METHOD_CHOICES, THRESHOLD_LABEL, listModelChoices
from CovidCTAnalysisSlicer.requirements import isTorchAvailable
from CovidCTAnalysisSlicer.segmentations import (
    referenceLabelmapFromSegmentationNode,
    segmentationNodeFromLabelmap,
    segmentNames,
)
from CovidCTAnalysisSlicer.tables import rowsFromTableNode, statisticsRows
from CovidCTAnalysisSlicer.volumes import addVolumeNodeFromSitkImage, sitkImageFromVolumeNode

MODEL_LABEL = next(label for label, value in METHOD_CHOICES.items() if value == "model")


def addPhantomToScene(scene, kind: str = "covid", seed: int = 7, size=None):
    """A synthetic phantom as a volume node plus its truth as a segmentation node: (phantom, volume, truth)."""
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    phantom = make_phantom(kind, seed, size=size)
    volumeNode = addVolumeNodeFromSitkImage(scene, phantom.image, f"{kind} phantom {seed}")
    truthNode = segmentationNodeFromLabelmap(scene, phantom.truth, f"{kind} phantom {seed} truth", volumeNode)
    return phantom, volumeNode, truthNode


def tableMismatches(tableNode, report: dict, places: int = 3) -> list[str]:
    """Cells of the statistics table that differ from ``report.json`` (empty when they agree)."""
    shown = {row["Segment"]: row for row in rowsFromTableNode(tableNode)}
    problems = []
    for expected in statisticsRows(report):
        row = shown.get(expected["Segment"])
        if row is None:
            problems.append(f"row {expected['Segment']} is missing")
            continue
        for column, value in expected.items():
            if column == "Segment" or (isinstance(value, float) and math.isnan(value)):
                continue
            if column not in row or round(row[column] - value, places) != 0:
                problems.append(f"{expected['Segment']} {column}: table {row.get(column)} != report {value}")
    return problems


def tableValue(tableNode, segment: str, column: str) -> float:
    """One number of the statistics table."""
    for row in rowsFromTableNode(tableNode):
        if row["Segment"] == segment:
            return float(row[column])
    raise KeyError(f"no row {segment!r} in table '{tableNode.GetName()}'")


def runSelfTest(test, logic, scene, modelsDir: str = "") -> Iterator[str]:
    """The self-test's steps (see the module docstring); yields a line per step, asserts with ``test``."""
    import numpy as np
    import SimpleITK as sitk

    phantom, volumeNode, truthNode = addPhantomToScene(scene, "covid", 7, size=(96, 96, 40))
    back = sitkImageFromVolumeNode(volumeNode)
    test.assertTrue(np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(phantom.image)))
    truthBack = referenceLabelmapFromSegmentationNode(truthNode, volumeNode)
    test.assertTrue(np.array_equal(sitk.GetArrayViewFromImage(truthBack), sitk.GetArrayViewFromImage(phantom.truth)))
    yield "Phantom into the scene and back: identical voxels and labels"

    missing = logic.missingRequirements() + ([] if isTorchAvailable() else ["torch (PyTorch extension)"])
    if missing:
        yield f"Skipped the analysis: the first Analyze has not installed {', '.join(missing)} yet"
        return
    parameterNode = logic.getParameterNode()
    parameterNode.inputVolume = volumeNode
    parameterNode.referenceSegmentation = truthNode
    parameterNode.segmentPolicy = "always"
    parameterNode.modelsDir = modelsDir
    parameterNode.method = THRESHOLD_LABEL
    results = logic.process(parameterNode)
    _checkResults(test, parameterNode, results, phantom)
    test.assertEqual(parameterNode.resultClass, "")  # the threshold method does not classify
    yield "Threshold method end to end: lungs and lesions, table agrees with report.json"

    if not (listModelChoices("classification", modelsDir)[0] and listModelChoices("segmentation", modelsDir)[0]):
        yield "Skipped the model method: no trained models installed"
        return
    parameterNode.method = MODEL_LABEL
    results = logic.process(parameterNode)
    _checkResults(test, parameterNode, results, phantom)
    test.assertIn(parameterNode.resultClass, ("Normal", "Pneumonia", "COVID-19"))
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    logic.process(parameterNode)
    test.assertEqual(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before)
    yield "Model method end to end; a re-run replaced its results"


def _checkResults(test, parameterNode, results, phantom) -> None:
    test.assertEqual(segmentNames(parameterNode.outputSegmentation), ["Left lung", "Right lung", "Lesion"])
    test.assertEqual(tableMismatches(parameterNode.outputTable, results.report), [])
    test.assertGreater(tableValue(parameterNode.outputTable, "Left lung", "Dice"), 0.5)
    test.assertGreater(tableValue(parameterNode.outputTable, "Right lung", "Dice"), 0.5)
    test.assertIn("not for diagnosis", parameterNode.resultNote.lower())
