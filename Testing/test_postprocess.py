"""Post-processing of network labelmaps: stray pieces, left/right by patient coordinates, lesions in lungs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.inference.postprocess import postprocess_labelmap, postprocess_with_notes
from orientations import rotation, signed_permutation

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SPACING = (1.5, 1.5, 2.5)


def two_lungs(shape=(20, 40, 60)) -> np.ndarray:
    """(z, y, x) labels: lung boxes at low x and high x, label decided by the caller."""
    arr = np.zeros(shape, np.uint8)
    arr[3:17, 8:32, 5:25] = 10  # low array x
    arr[3:17, 8:32, 35:57] = 20  # high array x
    return arr


def as_image(arr, direction=IDENTITY) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING)
    img.SetDirection(direction)
    img.SetOrigin((-40.0, 12.0, 100.0))
    return img


def labelled(low_x_label: int, high_x_label: int) -> np.ndarray:
    arr = two_lungs()
    arr[arr == 10] = low_x_label
    arr[arr == 20] = high_x_label
    return arr


@pytest.mark.parametrize("direction, correct", [(IDENTITY, labelled(2, 1)), (FLIP_X, labelled(1, 2))])
def test_left_right_swapped_back_by_patient_coordinates(direction, correct):
    # LPS +x is the patient's left: with identity direction the left lung (1) is at high index x;
    # with a flipped x axis it is at low index x.
    swapped = np.where(correct == 1, 2, np.where(correct == 2, 1, correct)).astype(np.uint8)
    out, notes = postprocess_with_notes(as_image(swapped, direction))
    assert np.array_equal(sitk.GetArrayFromImage(out), correct)
    assert any("swapped" in n for n in notes)
    kept, notes = postprocess_with_notes(as_image(correct, direction))
    assert np.array_equal(sitk.GetArrayFromImage(kept), correct) and notes == []


def test_geometry_is_kept():
    img = as_image(labelled(2, 1), FLIP_X)
    out = postprocess_labelmap(img)
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == img.GetSpacing()
    assert out.GetOrigin() == img.GetOrigin() and out.GetDirection() == img.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8


def test_small_stray_pieces_removed_and_islands_relabelled():
    arr = labelled(2, 1)
    arr[0:2, 0:3, 28:31] = 1  # speck far outside the lungs
    arr[10:12, 15:17, 40:42] = 2  # island labelled "right" inside the left lung
    out = sitk.GetArrayFromImage(postprocess_labelmap(as_image(arr)))
    assert not out[0:2, 0:3, 28:31].any()
    assert (out[10:12, 15:17, 40:42] == 1).all()
    assert np.array_equal(out, labelled(2, 1))


def test_lesion_pieces_apart_from_the_lungs_removed_and_consolidation_kept_whole():
    arr = labelled(2, 1)  # lungs at array x 5:25 and 35:57, y 8:32 (1.5 mm voxels in plane)
    arr[8:12, 14:20, 10:20] = 3  # inside the right lung
    arr[5:15, 28:40, 8:20] = 3  # consolidation from the lung's edge out to 12 mm beyond it: one piece
    arr[3:17, 8:32, 28:32] = 3  # a separate piece between the lungs, 6 mm from each (large: no stray speck)
    arr[17:20, 36:40, 0:4] = 3  # a corner far from both lungs
    out, notes = postprocess_with_notes(as_image(arr), lesion_margin_mm=4.0)
    out = sitk.GetArrayFromImage(out)
    assert (out[8:12, 14:20, 10:20] == 3).all()
    assert (out[5:15, 28:40, 8:20] == 3).all()  # kept whole, also the voxels 12 mm from the lung
    assert not out[3:17, 8:32, 28:32].any()  # apart from the lungs by more than the margin
    assert not (out[17:20, 36:40, 0:4] == 3).any()
    assert any("in 1 piece(s) farther than 4 mm" in n for n in notes), notes
    wide = sitk.GetArrayFromImage(postprocess_labelmap(as_image(arr), lesion_margin_mm=10.0))
    assert (wide[3:17, 8:32, 28:32] == 3).all()  # the margin is what decides
    assert not (wide[17:20, 36:40, 0:4] == 3).any()
    assert np.array_equal(out == 1, labelled(2, 1) == 1)


def test_phantom_truth_passes_unchanged_including_a_lobar_consolidation():
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    truth = make_phantom("pneumonia", 100).truth  # lobar consolidation reaching ~ 45 mm from aerated lung
    before = sitk.GetArrayFromImage(truth) == 3
    after = sitk.GetArrayFromImage(postprocess_labelmap(truth)) == 3
    assert before.sum() > 0 and np.array_equal(before, after)


def test_lesions_kept_when_not_restricted_and_bad_values_refused():
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[2:8, 2:8, 2:8] = 3
    out = sitk.GetArrayFromImage(postprocess_labelmap(as_image(arr), restrict_lesions=False))
    assert (out == 3).sum() == 216
    assert not sitk.GetArrayFromImage(postprocess_labelmap(as_image(arr))).any()  # no lungs: no lesions
    arr[0, 0, 0] = 7
    with pytest.raises(ValueError, match="expected only 0, 1, 2, 3"):
        postprocess_labelmap(as_image(arr))


def test_a_small_lung_is_kept_while_specks_go():
    arr = np.zeros((20, 40, 60), np.uint8)
    arr[2:18, 5:35, 32:58] = 1  # large left lung (high x)
    arr[8:11, 15:19, 10:14] = 2  # collapsed right lung: ~ 0.4 % of the left
    arr[0:2, 0:2, 0:2] = 1  # speck
    out = sitk.GetArrayFromImage(postprocess_labelmap(as_image(arr)))
    assert (out[8:11, 15:19, 10:14] == 2).all()
    assert not out[0:2, 0:2, 0:2].any()


ORIENTATIONS = [
    signed_permutation((1, 0, 2), (1, 1, 1)),  # image x runs along LPS y, image y along LPS x
    signed_permutation((1, 0, 2), (-1, -1, 1)),
    signed_permutation((2, 1, 0), (1, 1, 1)),  # image z runs along the patient's left-right axis (sagittal stack)
    signed_permutation((0, 2, 1), (-1, 1, -1)),  # coronal, x flipped
    rotation(2, 35.0) @ signed_permutation((1, 0, 2), (1, -1, 1)),  # tilted and axis-swapped
    rotation(2, -40.0),  # tilted: image x still closest to LPS x, but only at cos 40
]


def lungs_placed_by_patient_side(direction: np.ndarray, left_label: int, right_label: int) -> sitk.Image:
    """A 32^3 labelmap whose two lungs are put by LPS x (patient's left = +x), whatever the direction."""
    img = sitk.Image([32, 32, 32], sitk.sitkUInt8)
    img.SetSpacing((2.0, 2.0, 2.0))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    img.SetOrigin(tuple(float(v) for v in -direction @ np.full(3, 31.0)))  # centre of the volume at LPS 0
    k, j, i = np.meshgrid(*[np.arange(32)] * 3, indexing="ij")  # (z, y, x) arrays of index z, y, x
    lps = np.tensordot(direction, np.stack([i, j, k]) * 2.0, axes=1) + np.array(img.GetOrigin())[:, None, None, None]
    x, y, z = lps
    body = (np.abs(y) < 16) & (np.abs(z) < 16)
    arr = np.zeros((32, 32, 32), np.uint8)
    arr[body & (x > 6) & (x < 26)] = left_label
    arr[body & (x < -6) & (x > -26)] = right_label
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("direction", ORIENTATIONS, ids=["swap-xy", "swap-xy-flipped", "sagittal", "coronal",
                                                         "tilted-swapped", "tilted-40"])
def test_left_right_follow_the_patient_for_axis_swapped_and_tilted_directions(direction):
    # Catches a side taken from the array's x index (times direction[0, 0]) instead of patient coordinates.
    correct = lungs_placed_by_patient_side(direction, 1, 2)
    truth = sitk.GetArrayFromImage(correct)
    assert (truth == 1).sum() > 1000 and (truth == 2).sum() > 1000
    out, notes = postprocess_with_notes(lungs_placed_by_patient_side(direction, 2, 1))
    assert np.array_equal(sitk.GetArrayFromImage(out), truth), notes
    assert any("swapped" in n for n in notes)
    kept, notes = postprocess_with_notes(correct)
    assert np.array_equal(sitk.GetArrayFromImage(kept), truth) and notes == []
