"""MRML glue of "Correct lesions": point lists → the core's clicks, and a result's segments updated in place
from a corrected labelmap, with undo.

Slicer's markups are in RAS (world coordinates, parent transforms applied); the core's clicks are LPS mm.
Only control points whose position is *defined* count (a point being placed is *preview*). The
corrected labelmap comes from the core (``interactive.refine``); ``LesionEdits.apply`` writes its left
lung, right lung and lesion into the existing segments (their ids, names, colours and terminology stay),
so views and the statistics table follow, and keeps the previous labelmap for ``undo``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from CovidCTAnalysisLib import constants
from CovidCTAnalysisLib.interactive.clicks import Click, check_clicks

from CovidCTAnalysisSlicer.segmentations import (
    _removeVolumeNode,
    referenceLabelmapFromSegmentationNode,
    segmentIdByName,
)
from CovidCTAnalysisSlicer.volumes import addVolumeNodeFromSitkImage, sitkImageFromVolumeNode

MAX_UNDO = 20


def clicksFromMarkupsNode(markupsNode, kind: str) -> list[Click]:
    """The defined control points of a point list as clicks of ``kind`` ("add"/"remove") in LPS mm."""
    return [clickFromControlPoint(markupsNode, index, kind) for index in range(markupsNode.GetNumberOfControlPoints())
            if markupsNode.GetNthControlPointPositionStatus(index) == markupsNode.PositionDefined]


def clickFromControlPoint(markupsNode, index: int, kind: str) -> Click:
    """Control point ``index`` of a point list (world RAS, parent transforms applied) as a click in LPS mm."""
    ras = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, ras)
    label = markupsNode.GetNthControlPointLabel(index) or str(index)
    return Click(kind, (-ras[0], -ras[1], ras[2]), f"{markupsNode.GetName()}:{label}")


def checkClicks(volumeNode, segmentationNode, clicks: list[Click]) -> None:
    """The core's refusals (outside the image; an add click outside the lungs) for clicks on a Slicer result."""
    labels = referenceLabelmapFromSegmentationNode(segmentationNode, volumeNode)
    check_clicks(sitkImageFromVolumeNode(volumeNode), sitk.GetArrayViewFromImage(labels), clicks)


class LesionEdits:
    """A result's segmentation node, updated in place from corrected labelmaps, with an undo stack."""

    def __init__(self, segmentationNode, volumeNode) -> None:
        self.segmentationNode, self.volumeNode = segmentationNode, volumeNode
        self.undoStack: list[sitk.Image] = []

    def currentLabelmap(self) -> sitk.Image:
        return referenceLabelmapFromSegmentationNode(self.segmentationNode, self.volumeNode)

    def apply(self, labelmap: sitk.Image) -> None:
        """Write ``labelmap`` (1/2/3 on the volume's grid) into the segments; the present state can be undone."""
        self.undoStack.append(self.currentLabelmap())
        del self.undoStack[:-MAX_UNDO]
        self._write(labelmap)

    def undo(self) -> bool:
        """Restore the labelmap before the last ``apply``; False when there is nothing to undo."""
        if not self.undoStack:
            return False
        self._write(self.undoStack.pop())
        return True

    def _write(self, labelmap: sitk.Image) -> None:
        scene = self.segmentationNode.GetScene()
        for label, name in sorted(constants.LABEL_NAMES.items()):
            segmentId = segmentIdByName(self.segmentationNode, name)
            if segmentId is None:
                raise ValueError(f"segmentation {self.segmentationNode.GetName()!r} has no {name!r} segment; "
                                 "expected the segments of an analysis result")
            mask = sitk.Cast(labelmap == label, sitk.sitkUInt8)
            node = addVolumeNodeFromSitkImage(scene, mask, f"{name} (correction)", labelmap=True)
            try:
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(segmentId)
                if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                        node, self.segmentationNode, ids):
                    raise RuntimeError(f"Slicer could not update segment {name!r}")
            finally:
                _removeVolumeNode(scene, node)


def lesionVoxels(labelmap: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(labelmap) == constants.LESION))
