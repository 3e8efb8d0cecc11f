"""Helpers of the module's self-test (CovidCTAnalysisTest), kept here so pytest checks them too."""

from __future__ import annotations

import math

from CovidCTAnalysisSlicer.segmentations import segmentationNodeFromLabelmap
from CovidCTAnalysisSlicer.tables import rowsFromTableNode, statisticsRows
from CovidCTAnalysisSlicer.volumes import addVolumeNodeFromSitkImage


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
