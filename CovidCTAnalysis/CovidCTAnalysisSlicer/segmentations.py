"""Segmentation nodes from the core's outputs, and reference segmentations back to labelmaps.

The core writes ``segmentation.seg.nrrd`` with slicerio: segment names, colours
and terminology are in the file, so it is read with Slicer's own segmentation
storage node, which keeps all three. A reference segmentation chosen by the user
is turned into a labelmap in the core's convention (1 = left lung, 2 = right
lung, 3 = lesion) on the input volume's grid, for Dice and HD95.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from CovidCTAnalysisLib import constants
from vtk.util import numpy_support

from CovidCTAnalysisSlicer.volumes import addVolumeNodeFromSitkImage, sitkImageFromVolumeNode

EXPECTED_SEGMENTS = tuple(constants.LABEL_NAMES[label] for label in sorted(constants.LABEL_NAMES))

# Names (lower case) a reference segment may carry for each core label; datasets differ.
REFERENCE_NAME_ALIASES: dict[int, tuple[str, ...]] = {
    constants.LEFT_LUNG: ("left lung", "lung left", "lung_left", "left_lung", "l lung", "lungleft"),
    constants.RIGHT_LUNG: ("right lung", "lung right", "lung_right", "right_lung", "r lung", "lungright"),
    constants.LESION: ("lesion", "lesions", "infection", "covid-19 lesion", "ggo", "ground-glass opacity",
                       "consolidation", "covid lesion"),
}


def segNrrdSegmentNames(path: str | Path) -> list[str]:
    """Segment names in a ``.seg.nrrd`` header (voxels are not read)."""
    import slicerio  # installed on first Analyze (not bundled with Slicer), so imported only when used

    segmentation = slicerio.read_segmentation(str(path), skip_voxels=True)
    return [segment.get("name", segment.get("id", "")) for segment in segmentation.get("segments", [])]


def loadSegNrrdIntoSegmentationNode(path: str | Path, segmentationNode, referenceVolumeNode=None) -> None:
    """Replace the segments of ``segmentationNode`` (already in a scene) with those of a ``.seg.nrrd``.

    The file is checked first: it must hold the segments Left lung, Right lung and
    Lesion, else the node is left as it was and ``ValueError`` says what was found.
    Names, colours and terminology come from the file. With ``referenceVolumeNode``
    the node's reference geometry is set to that volume, so later edits use its grid.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"segmentation file {path} does not exist; expected the analysis output segmentation.seg.nrrd")
    names = segNrrdSegmentNames(path)
    missing = [name for name in EXPECTED_SEGMENTS if name not in names]
    if missing:
        raise ValueError(f"{path} has segments {names}; expected {list(EXPECTED_SEGMENTS)} (missing {missing})")
    storageNode = slicer.vtkMRMLSegmentationStorageNode()
    storageNode.SetFileName(str(path))
    if not storageNode.ReadData(segmentationNode):
        raise ValueError(f"Slicer could not read {path} as a segmentation")
    if referenceVolumeNode is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)


def segmentIdByName(segmentationNode, name: str) -> str | None:
    """The id of the first segment named ``name`` (exact match), or None."""
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        if segmentation.GetNthSegment(index).GetName() == name:
            return segmentation.GetNthSegmentID(index)
    return None


def segmentNames(segmentationNode) -> list[str]:
    """Names of the node's segments, in order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def segmentVoxelCount(segmentationNode, segmentId: str) -> int:
    """Number of voxels in one segment's binary labelmap (as stored, shared layers resolved)."""
    orientedImage = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, orientedImage)
    scalars = orientedImage.GetPointData().GetScalars()
    if scalars is None:
        return 0
    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars)))


def segmentTerminology(segmentationNode, segmentId: str) -> str:
    """The segment's Slicer terminology entry string ('' when none)."""
    value = vtk.mutable("")
    segmentationNode.GetSegmentation().GetSegment(segmentId).GetTag("TerminologyEntry", value)
    return str(value)


def terminologyTypeCode(terminology: str) -> str:
    """The type's code value in a Slicer terminology string (slicerio parses it); '' when none or malformed."""
    from slicerio.segmentation import terminology_entry_from_string

    try:
        typeCode = terminology_entry_from_string(terminology).get("type") or []
    except (IndexError, ValueError):  # slicerio raises IndexError on a string with too few fields
        return ""
    return typeCode[1] if len(typeCode) > 1 else ""


def matchReferenceSegments(segmentationNode) -> dict[int, str]:
    """Map core labels to segment ids of a reference segmentation, by name or terminology code.

    Raises ``ValueError`` naming the segments found when none can be matched.
    """
    codes = {label: term.type[0] for label, term in constants.TERMINOLOGY.items()}
    segmentation = segmentationNode.GetSegmentation()
    matches: dict[int, str] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        name = segmentation.GetNthSegment(index).GetName().strip().lower()
        typeCode = terminologyTypeCode(segmentTerminology(segmentationNode, segmentId))
        for label, aliases in REFERENCE_NAME_ALIASES.items():
            if label not in matches and (name in aliases or typeCode == codes[label]):
                matches[label] = segmentId
                break
    if not matches:
        raise ValueError(
            f"reference segmentation '{segmentationNode.GetName()}' has segments {segmentNames(segmentationNode)}; "
            f"expected names such as {list(EXPECTED_SEGMENTS)} (or 'infection' for lesions). Rename its segments."
        )
    return matches


def referenceLabelmapFromSegmentationNode(segmentationNode, referenceVolumeNode) -> sitk.Image:
    """A uint8 labelmap in the core's convention on ``referenceVolumeNode``'s grid (LPS).

    Each matched segment is exported to the volume's geometry; lesion is written
    last so that it wins where a dataset overlaps it with a lung. Unmatched labels
    stay 0, so Dice is only reported for what the reference holds.
    """
    scene = segmentationNode.GetScene()
    matches = matchReferenceSegments(segmentationNode)
    reference = sitkImageFromVolumeNode(referenceVolumeNode)
    combined = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    # The export adds helper nodes (a labelmap, its display node, a colour table); all are removed after.
    existing = _nodeIds(scene)
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    labelmapNode.SetHideFromEditors(True)
    scene.AddNode(labelmapNode)
    try:
        for label in sorted(matches):
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(matches[label])
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmapNode, referenceVolumeNode
            )
            if not exported:
                raise ValueError(f"segment '{matches[label]}' could not be exported to the grid of "
                                 f"'{referenceVolumeNode.GetName()}'")
            mask = sitk.GetArrayFromImage(sitkImageFromVolumeNode(labelmapNode)) > 0
            combined[mask] = label
    finally:
        for nodeId in reversed([i for i in _nodeIds(scene) if i not in existing]):
            scene.RemoveNode(scene.GetNodeByID(nodeId))
    out = sitk.GetImageFromArray(combined)
    out.CopyInformation(reference)
    return out


def segmentationNodeFromLabelmap(scene, labelmap: sitk.Image, name: str, referenceVolumeNode=None):
    """A new segmentation node from a core labelmap (1/2/3) with names and colours from ``constants``.

    Used for the self-test's phantom truth and for references kept as labelmaps;
    analysis results are read from the ``.seg.nrrd`` instead.
    """
    segmentationNode = slicer.vtkMRMLSegmentationNode()
    segmentationNode.SetName(name)
    scene.AddNode(segmentationNode)
    segmentationNode.CreateDefaultDisplayNodes()
    segmentation = segmentationNode.GetSegmentation()
    for label, segmentName in sorted(constants.LABEL_NAMES.items()):
        mask = sitk.Cast(labelmap == label, sitk.sitkUInt8)
        if not np.any(sitk.GetArrayViewFromImage(mask)):
            continue
        single = addVolumeNodeFromSitkImage(scene, mask, f"{name} {segmentName}", labelmap=True)
        try:
            before = segmentation.GetNumberOfSegments()
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(single, segmentationNode)
            segment = segmentation.GetNthSegment(before)
            segment.SetName(segmentName)
            segment.SetColor(*(c / 255.0 for c in constants.TERMINOLOGY[label].color_rgb))
        finally:
            _removeVolumeNode(scene, single)
    if referenceVolumeNode is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    return segmentationNode


def _nodeIds(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def _removeVolumeNode(scene, volumeNode) -> None:
    for index in reversed(range(volumeNode.GetNumberOfDisplayNodes())):
        scene.RemoveNode(volumeNode.GetNthDisplayNode(index))
    scene.RemoveNode(volumeNode)
