"""Bringing an analysis output folder into the scene, replacing earlier results.

Result nodes are found by two attributes (the source volume's id and a role),
so a re-run for the same volume updates its segmentation and table nodes
instead of adding new ones. Everything is checked before the scene is touched,
and nodes made by a failed load are removed, so the scene never holds half a
result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib import INTENDED_USE, constants
from CovidCTAnalysisLib.models.metadata import demo_tag
from CovidCTAnalysisLib.results.outputs import REPORT_JSON, SEG_NRRD

from CovidCTAnalysisSlicer.segmentations import loadSegNrrdIntoSegmentationNode
from CovidCTAnalysisSlicer.tables import updateTableNodeFromReport

SOURCE_VOLUME_ATTRIBUTE = "CovidCTAnalysis.SourceVolumeID"
ROLE_ATTRIBUTE = "CovidCTAnalysis.Role"
MODELS_ATTRIBUTE = "CovidCTAnalysis.Models"
SEGMENTATION_ROLE = "segmentation"
STATISTICS_ROLE = "statistics"


@dataclass
class AnalysisResults:
    """What one finished analysis put into the scene (nodes may be None when segmentation did not run)."""

    report: dict[str, Any]
    segmentationNode: Any = None
    tableNode: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def classLabel(self) -> str:
        return classificationLabel(self.report)

    @property
    def probabilities(self) -> dict[str, float]:
        return classProbabilities(self.report)


def readReport(outputDir: str | Path) -> dict[str, Any]:
    """``report.json`` of an output folder; ``ValueError`` naming the file when absent or not JSON."""
    path = Path(outputDir) / REPORT_JSON
    if not path.is_file():
        raise ValueError(f"the analysis wrote no {REPORT_JSON} in {outputDir}; expected the CLI's outputs there")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(report, dict) or "classification" not in report:
        raise ValueError(f"{path} has no 'classification' section; expected a CovidCTAnalysis report")
    return report


def classificationLabel(report: dict[str, Any]) -> str:
    """The predicted class, or '' when the classifier did not run."""
    return str((report.get("classification") or {}).get("label") or "")


def classProbabilities(report: dict[str, Any]) -> dict[str, float]:
    """{class name: probability} in ``constants.CLASS_NAMES`` order (empty when not classified)."""
    probabilities = (report.get("classification") or {}).get("probabilities") or {}
    if isinstance(probabilities, (list, tuple)):
        probabilities = dict(zip(constants.CLASS_NAMES, probabilities, strict=False))
    return {name: float(probabilities[name]) for name in constants.CLASS_NAMES if name in probabilities}


def classificationText(report: dict[str, Any]) -> str:
    """One line: the class and its three probabilities, or why there is none."""
    label = classificationLabel(report)
    if not label:
        note = (report.get("classification") or {}).get("note") or "the classifier did not run"
        return f"Not classified ({note})"
    probabilities = ", ".join(f"{name} {100 * p:.1f} %" for name, p in classProbabilities(report).items())
    return f"{label}  ({probabilities})"


def provenanceLine(report: dict[str, Any]) -> str:
    """The models that made the result: id, version, sha256 prefix, training data, DEMO tag."""
    parts = []
    for model in report.get("models") or []:
        demo = f" [{demo_tag(model)}]" if model.get("demo") else ""
        sha = str(model.get("sha256", ""))[:12]
        trained = f"; trained on {model['trained_on']}" if model.get("trained_on") else ""
        parts.append(f"{model.get('task', 'model')}: {model.get('id', '?')} v{model.get('version', '?')} "
                     f"(sha256 {sha}{trained}){demo}")
    if not parts:
        parts.append(f"method: {report.get('method', 'unknown')} (no trained model)")
    return "; ".join(parts)


def researchNote(report: dict[str, Any]) -> str:
    """The intended-use line shown with every result, with the demo warning when a demo model ran and the
    report's other warnings (little lung in the scan, a lung cross-check flag)."""
    note = str(report.get("intended_use") or INTENDED_USE)
    if report.get("warning"):
        note += " " + str(report["warning"])
    for warning in report.get("warnings") or []:
        note += f" Warning: {warning}."
    return note


def parameterValues(results: AnalysisResults) -> dict[str, Any]:
    """The parameter-node fields a finished analysis sets (class, probabilities, lines shown, result nodes)."""
    probabilities = results.probabilities
    return {
        "resultClass": results.classLabel,
        "probabilityNormal": probabilities.get("Normal", 0.0),
        "probabilityPneumonia": probabilities.get("Pneumonia", 0.0),
        "probabilityCovid": probabilities.get("COVID-19", 0.0),
        "resultSummary": classificationText(results.report),
        "resultProvenance": provenanceLine(results.report),
        "resultNote": researchNote(results.report),
        "outputSegmentation": results.segmentationNode,
        "outputTable": results.tableNode,
    }


def findResultNode(scene, className: str, volumeNode, role: str):
    """The result node of ``role`` made earlier for ``volumeNode``, or None."""
    nodes = scene.GetNodesByClass(className)
    nodes.UnRegister(scene)  # GetNodesByClass hands over a reference (as slicer.util.getNodesByClass does)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if (node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) == volumeNode.GetID()
                and node.GetAttribute(ROLE_ATTRIBUTE) == role):
            return node
    return None


def _newResultNode(scene, className: str, volumeNode, role: str, name: str):
    node = scene.AddNewNodeByClass(className, name)
    node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, volumeNode.GetID())
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    return node


def removeResultNodes(scene, volumeNode) -> int:
    """Remove every result node made for ``volumeNode``; returns how many were removed."""
    removed = 0
    for className, role in (("vtkMRMLSegmentationNode", SEGMENTATION_ROLE), ("vtkMRMLTableNode", STATISTICS_ROLE)):
        node = findResultNode(scene, className, volumeNode, role)
        if node is not None:
            _removeNodeWithDisplay(scene, node)
            removed += 1
    return removed


def _removeNodeWithDisplay(scene, node) -> None:
    if hasattr(node, "GetNumberOfDisplayNodes"):
        for index in reversed(range(node.GetNumberOfDisplayNodes())):
            scene.RemoveNode(node.GetNthDisplayNode(index))
    scene.RemoveNode(node)


def applyAnalysisOutputs(scene, volumeNode, outputDir: str | Path) -> AnalysisResults:
    """Load an output folder (report.json, segmentation.seg.nrrd) as the results of ``volumeNode``.

    Earlier results of the same volume are updated in place; when this run did
    not segment (class not COVID-19 with segment policy 'auto'), they are removed
    so that no stale segmentation sits beside the new class.
    """
    outputDir = Path(outputDir)
    report = readReport(outputDir)
    segmentationRan = bool((report.get("segmentation") or {}).get("ran", bool(report.get("segments"))))
    segPath = outputDir / SEG_NRRD
    if segmentationRan and not segPath.is_file():
        raise ValueError(f"report says segmentation ran but {segPath} is missing")
    results = AnalysisResults(report=report)
    if not segmentationRan:
        removeResultNodes(scene, volumeNode)
        return results

    volumeName = volumeNode.GetName()
    created = []
    segmentationNode = findResultNode(scene, "vtkMRMLSegmentationNode", volumeNode, SEGMENTATION_ROLE)
    tableNode = findResultNode(scene, "vtkMRMLTableNode", volumeNode, STATISTICS_ROLE)
    try:
        if segmentationNode is None:
            segmentationNode = _newResultNode(scene, "vtkMRMLSegmentationNode", volumeNode, SEGMENTATION_ROLE,
                                              f"{volumeName} segmentation")
            created.append(segmentationNode)
        if segmentationNode.GetDisplayNode() is None:
            displayNode = scene.AddNewNodeByClass("vtkMRMLSegmentationDisplayNode")
            segmentationNode.SetAndObserveDisplayNodeID(displayNode.GetID())
        loadSegNrrdIntoSegmentationNode(segPath, segmentationNode, volumeNode)
        segmentationNode.SetAttribute(MODELS_ATTRIBUTE, json.dumps(report.get("models") or []))
        if tableNode is None:
            tableNode = _newResultNode(scene, "vtkMRMLTableNode", volumeNode, STATISTICS_ROLE,
                                       f"{volumeName} statistics")
            created.append(tableNode)
        results.rows = updateTableNodeFromReport(tableNode, report)
    except Exception:
        for node in created:
            _removeNodeWithDisplay(scene, node)
        raise
    results.segmentationNode = segmentationNode
    results.tableNode = tableNode
    return results


def modelsFromSegmentationNode(segmentationNode) -> list[dict[str, Any]]:
    """The models[] provenance stored on a result segmentation (empty for other segmentations)."""
    text = segmentationNode.GetAttribute(MODELS_ATTRIBUTE) if segmentationNode is not None else None
    return json.loads(text) if text else []
