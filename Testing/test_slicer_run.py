"""The Logic's whole path without Qt: volume node -> temp file -> real ``covidct analyze`` subprocess ->
segmentation and table nodes, with a reference segmentation for Dice; cancel leaves nothing behind.

The threshold method needs no trained model; the model path runs with the session's tiny demo models
(``tiny_models.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()  # skips locally, fails under CI=true

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
sys.path.insert(0, str(MODULE))

from CovidCTAnalysisLib import constants  # noqa: E402
from CovidCTAnalysisSlicer import segmentations, selftest, tables, volumes  # noqa: E402
from CovidCTAnalysisSlicer.models import listModelChoices  # noqa: E402
from CovidCTAnalysisSlicer.process import AnalyzeOptions  # noqa: E402
from CovidCTAnalysisSlicer.run import AnalysisRun  # noqa: E402
from slicer_scene import newScene  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    # Small grid, oblique-free but non-unit spacing; big enough for the core's minimum extent.
    return make_phantom("covid", 11, size=(96, 96, 40))


def runToEnd(run: AnalysisRun, timeout: float = 600.0) -> list:
    events, start = [], time.monotonic()
    while not run.finished:
        events += run.poll()
        assert time.monotonic() - start < timeout
        time.sleep(0.05)
    return events


@pytest.mark.slow
def test_threshold_run_end_to_end_into_the_scene(phantom, tmp_path):
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, phantom.image, "Phantom CT")
    reference = segmentations.segmentationNodeFromLabelmap(scene, phantom.truth, "Truth", volumeNode)
    nodesBefore = scene.GetNumberOfNodes()
    run = AnalysisRun.start(volumeNode, AnalyzeOptions(method="threshold", segment="always", device="cpu"),
                            sys.executable, MODULE, referenceSegmentationNode=reference, tempRoot=tmp_path)
    assert (run.workDir / "input.nrrd").is_file() and (run.workDir / "reference.nii.gz").is_file()
    assert scene.GetNumberOfNodes() == nodesBefore  # the reference export left no helper nodes
    events = runToEnd(run)
    assert run.state == "succeeded", run.process.errorMessage + "\n" + "\n".join(run.process.logLines[-20:])
    fractions = [e.fraction for e in events if e.kind == "step"]
    assert fractions == sorted(fractions) and len(fractions) >= 3
    labelmap = sitk.ReadImage(str(run.outputDir / "labelmap.nii.gz"))
    results = run.finish(scene)
    assert not run.workDir.exists()  # temp files are gone once the results are in the scene

    segNode = results.segmentationNode
    assert segNode.GetName() == "Phantom CT segmentation"
    assert segmentations.segmentNames(segNode) == ["Left lung", "Right lung", "Lesion"]
    array = sitk.GetArrayFromImage(labelmap)
    for label, name in constants.LABEL_NAMES.items():
        count = segmentations.segmentVoxelCount(segNode, segmentations.segmentIdByName(segNode, name))
        assert count == int(np.count_nonzero(array == label))
    # The segmentation lies on the volume's grid: exporting it to the volume gives the CLI's labelmap.
    back = segmentations.referenceLabelmapFromSegmentationNode(segNode, volumeNode)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)

    rows = {r["Segment"]: r for r in tables.rowsFromTableNode(results.tableNode)}
    for segment in results.report["segments"]:
        row = rows[segment["name"]]
        assert row["Volume"] == pytest.approx(segment["volume_ml"])
        if segment["mean_hu"] is not None:
            assert row["Mean HU"] == pytest.approx(segment["mean_hu"])
    assert rows["Left lung"]["Lesion %"] == pytest.approx(results.report["statistics"]["lesion_percent"]["left"])
    # Dice against the phantom truth came back through --reference, and the lungs overlap well.
    assert rows["Left lung"]["Dice"] == pytest.approx(results.report["dice"]["Left lung"])
    assert rows["Left lung"]["Dice"] > 0.8 and rows["Right lung"]["Dice"] > 0.8
    assert results.classLabel == ""  # the threshold method does not classify
    assert selftest.tableMismatches(results.tableNode, results.report) == []


def test_cancel_mid_run_leaves_no_nodes_and_no_files(phantom, tmp_path):
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, phantom.image, "Phantom CT")
    nodesBefore = scene.GetNumberOfNodes()
    run = AnalysisRun.start(volumeNode, AnalyzeOptions(method="threshold", segment="always", device="cpu"),
                            sys.executable, MODULE, tempRoot=tmp_path)
    start = time.monotonic()
    while not any(e.kind == "step" for e in run.poll()) and not run.finished:
        assert time.monotonic() - start < 120
        time.sleep(0.05)
    run.cancel()
    assert run.state in ("cancelled", "succeeded", "failed")
    assert not run.workDir.exists()
    assert scene.GetNumberOfNodes() == nodesBefore
    if run.state == "cancelled":
        with pytest.raises(RuntimeError, match="cancelled"):
            run.finish(scene)
    assert scene.GetNumberOfNodes() == nodesBefore


def test_bad_input_error_reaches_the_caller(tmp_path):
    """An input the core refuses (too small to hold lungs) fails with the core's own message."""
    scene = newScene()
    tiny = sitk.Image([8, 8, 4], sitk.sitkInt16) - 1000
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, tiny, "Tiny")
    run = AnalysisRun.start(volumeNode, AnalyzeOptions(method="threshold"), sys.executable, MODULE,
                            tempRoot=tmp_path)
    runToEnd(run, timeout=120)
    assert run.state == "failed" and run.process.returnCode != 0
    message = run.process.errorMessage
    assert "mm" in message or "extent" in message.lower() or "small" in message.lower(), message
    with pytest.raises(RuntimeError) as info:
        run.finish(scene)
    assert str(info.value) == message
    assert not run.workDir.exists()


@pytest.mark.slow
def test_model_run_classifies_when_models_are_installed(phantom, tmp_path, tiny_models_dir):
    """The model path with the session's tiny demo models (conftest) installed."""
    classifiers, message = listModelChoices("classification")
    segmenters, _ = listModelChoices("segmentation")
    assert classifiers and segmenters, message
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, phantom.image, "Phantom CT")
    run = AnalysisRun.start(volumeNode, AnalyzeOptions(segment="always", device="cpu", classifier=classifiers[0].spec,
                                                       segmenter=segmenters[0].spec), sys.executable, MODULE,
                            tempRoot=tmp_path)
    runToEnd(run, timeout=1200)
    assert run.state == "succeeded", run.process.errorMessage
    results = run.finish(scene)
    assert results.classLabel in constants.CLASS_NAMES
    assert sum(results.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert segmentations.segmentNames(results.segmentationNode) == ["Left lung", "Right lung", "Lesion"]
    assert {m["id"] for m in results.report["models"]} >= {classifiers[0].spec.split("@")[0]}
