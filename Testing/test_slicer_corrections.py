"""MRML glue of "Correct lesions" against the real MRML libraries (slicer-core): RAS markups become LPS clicks,
the lesion is updated in place and undone, and a click outside the image is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CovidCTAnalysis"))

from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG  # noqa: E402
from CovidCTAnalysisLib.errors import InputError  # noqa: E402
from CovidCTAnalysisLib.interactive.merge import merge_lesion  # noqa: E402
from CovidCTAnalysisSlicer import corrections, segmentations, volumes  # noqa: E402
from slicer_scene import newScene  # noqa: E402


@pytest.fixture()
def result():
    scene = newScene()
    img = sitk.Image((20, 18, 10), sitk.sitkInt16) - 800
    img.SetSpacing((1.5, 1.2, 2.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    lab = np.zeros((10, 18, 20), np.uint8)
    lab[2:8, 3:15, 2:9] = LEFT_LUNG  # x flipped: low index is the patient's left
    lab[2:8, 3:15, 11:18] = RIGHT_LUNG
    lab[3:6, 5:9, 12:15] = LESION
    labelmap = sitk.GetImageFromArray(lab)
    labelmap.CopyInformation(img)
    volume = volumes.addVolumeNodeFromSitkImage(scene, img, "ct")
    seg = segmentations.segmentationNodeFromLabelmap(scene, labelmap, "ct result", volume)
    return scene, img, labelmap, volume, seg


def test_markups_in_ras_become_lps_clicks_and_preview_points_are_left_out(result):
    scene = result[0]
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Add lesion")
    node.AddControlPoint(10.0, -20.0, 30.0, "A")
    node.AddControlPoint(1.0, 2.0, 3.0, "B")
    node.SetNthControlPointPosition(1, 1.0, 2.0, 3.0, node.PositionPreview)  # being placed
    node.AddControlPoint(4.0, 5.0, 6.0, "C")
    node.UnsetNthControlPointPosition(2)  # skipped by the user
    clicks = corrections.clicksFromMarkupsNode(node, "add")
    assert [c.lps for c in clicks] == [(-10.0, 20.0, 30.0)]
    assert clicks[0].source == "Add lesion:A" and clicks[0].positive


def test_lesion_is_updated_in_place_and_undone(result):
    _, img, labelmap, volume, seg = result
    ids = [seg.GetSegmentation().GetNthSegmentID(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    edits = corrections.LesionEdits(seg, volume)
    before = sitk.GetArrayFromImage(edits.currentLabelmap())
    assert np.array_equal(before, sitk.GetArrayFromImage(labelmap))
    new = before.copy()
    proposal = np.zeros((6, 10, 10), bool)
    proposal[1:5, 2:8, 2:6] = True  # grows the lesion, drops part of it
    merge_lesion(new, proposal, (10, 3, 2, 20, 13, 8))
    corrected = sitk.GetImageFromArray(new)
    corrected.CopyInformation(img)
    edits.apply(corrected)
    assert np.array_equal(sitk.GetArrayFromImage(edits.currentLabelmap()), new)
    assert [seg.GetSegmentation().GetNthSegmentID(i) for i in range(3)] == ids, "same segments, updated in place"
    assert corrections.lesionVoxels(edits.currentLabelmap()) == int((new == LESION).sum()) != int((before == 3).sum())
    assert edits.undo()
    assert np.array_equal(sitk.GetArrayFromImage(edits.currentLabelmap()), before)
    assert not edits.undo()


def test_a_click_outside_the_image_is_refused(result):
    scene, img, _, volume, seg = result
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Add lesion")
    inside = img.TransformIndexToPhysicalPoint((13, 7, 4))  # LPS, in the lesion
    node.AddControlPoint(-inside[0], -inside[1], inside[2], "in")
    corrections.checkClicks(volume, seg, corrections.clicksFromMarkupsNode(node, "add"))
    node.AddControlPoint(500.0, 0.0, 0.0, "far")
    with pytest.raises(InputError, match="Add lesion:far .* outside the image"):
        corrections.checkClicks(volume, seg, corrections.clicksFromMarkupsNode(node, "add"))
