"""Statistics: volumes, HU, components, lesion percent; Dice/HD95 and reference handling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.results.statistics import (
    compare_to_reference,
    dice,
    hd95_mm,
    lesion_percent,
    load_reference,
    parse_reference_labels,
    segment_statistics,
)


def _img(arr: np.ndarray, spacing=(1.5, 1.5, 2.5), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def _two_lungs(shape=(20, 40, 60)) -> np.ndarray:
    """Identity LPS direction: x index up = patient's left. Right lung at low x, left lung at high x."""
    lab = np.zeros(shape, np.uint8)
    lab[2:18, 5:35, 5:25] = RIGHT_LUNG
    lab[2:18, 5:35, 35:55] = LEFT_LUNG
    return lab


# --- phantoms with their TRUE labelmap --------------------------------------------------------


@pytest.mark.parametrize("kind,seed", [("covid", 1), ("normal", 2), ("pneumonia", 3)])
def test_volumes_and_hu_match_phantom_truth(kind, seed):
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    ph = make_phantom(kind, seed, size=(96, 80, 48))
    truth = ph.truth
    stats = {s["label"]: s for s in segment_statistics(ph.image, truth)}
    t = sitk.GetArrayFromImage(truth)
    ct = sitk.GetArrayFromImage(ph.image).astype(np.float64)
    vox_ml = float(np.prod(truth.GetSpacing())) / 1000.0
    for label in (LEFT_LUNG, RIGHT_LUNG, LESION):
        n = int((t == label).sum())
        expected_ml = n * vox_ml
        assert stats[label]["volume_ml"] == pytest.approx(expected_ml, rel=0.01, abs=1e-9)
        if n:
            assert stats[label]["mean_hu"] == pytest.approx(ct[t == label].mean(), abs=0.5)
            assert stats[label]["sd_hu"] == pytest.approx(ct[t == label].std(ddof=1), rel=0.01)
    assert stats[LEFT_LUNG]["volume_ml"] > 100 and stats[RIGHT_LUNG]["volume_ml"] > 100
    if kind == "normal":
        assert stats[LESION]["volume_ml"] == 0 and stats[LESION]["n_components"] == 0
    else:
        assert stats[LESION]["volume_ml"] > 0 and stats[LESION]["n_components"] >= 1
    pct = lesion_percent(truth)
    n_lung = int(((t == 1) | (t == 2)).sum())
    n_les = int((t == 3).sum())
    assert pct["total"] == pytest.approx(100.0 * n_les / (n_lung + n_les))
    assert pct["lesion_voxels_left"] + pct["lesion_voxels_right"] == n_les


# --- hand-built labelmaps -----------------------------------------------------------------------


def test_component_count_and_empty_segment():
    lab = _two_lungs()
    lab[5:8, 10:13, 10:13] = LESION
    lab[12:15, 20:23, 12:15] = LESION
    lab[12:15, 20:23, 40:43] = LESION
    ct = np.where(lab > 0, -800, 40).astype(np.int16)
    ct[lab == LESION] = -500
    stats = {s["label"]: s for s in segment_statistics(_img(ct), _img(lab))}
    assert stats[LESION]["n_components"] == 3
    assert stats[LESION]["n_voxels"] == 81
    assert stats[LESION]["mean_hu"] == pytest.approx(-500.0)
    assert stats[LESION]["sd_hu"] == pytest.approx(0.0, abs=1e-6)
    assert stats[LEFT_LUNG]["n_components"] == 1
    empty = {s["label"]: s for s in segment_statistics(_img(ct), _img(_two_lungs()))}
    assert empty[LESION]["mean_hu"] is None and empty[LESION]["volume_ml"] == 0


def test_lesion_percent_assigns_each_lesion_to_its_lung():
    lab = _two_lungs()
    lab[4:8, 10:20, 20:24] = LESION  # inside the right lung's box (low x)
    lab[4:8, 10:15, 36:46] = LESION  # inside the left lung's box (high x)
    n_r_les, n_l_les = 4 * 10 * 4, 4 * 5 * 10
    n_r, n_l = int((lab == RIGHT_LUNG).sum()), int((lab == LEFT_LUNG).sum())
    pct = lesion_percent(_img(lab))
    assert pct["lesion_voxels_left"] == n_l_les and pct["lesion_voxels_right"] == n_r_les
    assert pct["left"] == pytest.approx(100.0 * n_l_les / (n_l + n_l_les))
    assert pct["right"] == pytest.approx(100.0 * n_r_les / (n_r + n_r_les))
    assert pct["total"] == pytest.approx(100.0 * (n_l_les + n_r_les) / (n_l + n_r + n_l_les + n_r_les))


def test_lesion_side_follows_patient_coordinates_when_flipped():
    """With the x axis flipped (direction -1), high x index is the patient's RIGHT; sides follow the labels."""
    lab = _two_lungs()
    lab[lab == LEFT_LUNG] = 9
    lab[lab == RIGHT_LUNG] = LEFT_LUNG
    lab[lab == 9] = RIGHT_LUNG
    lab[4:8, 10:20, 40:44] = LESION  # inside the high-x lung, now the right lung
    img = _img(lab)
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    pct = lesion_percent(img)
    assert pct["lesion_voxels_right"] == 160 and pct["lesion_voxels_left"] == 0


def test_dice_identical_and_known_shift():
    a = np.zeros((30, 30, 40), bool)
    a[5:15, 5:15, 5:25] = True
    assert dice(a, a) == 1.0
    b = np.zeros_like(a)
    b[5:15, 5:15, 9:29] = True  # shifted 4 voxels in x: overlap 10*10*16
    assert dice(a, b) == pytest.approx(2 * 10 * 10 * 16 / (2 * 10 * 10 * 20))
    assert dice(np.zeros_like(a), np.zeros_like(a)) is None
    assert dice(a, np.zeros_like(a)) == 0.0


@pytest.mark.parametrize("axis,spacing_zyx", [(2, (2.5, 1.5, 0.7)), (0, (2.5, 1.5, 0.7)), (1, (1.0, 3.0, 1.0))])
def test_hd95_of_known_shift_equals_shift_in_mm(axis, spacing_zyx):
    a = np.zeros((30, 30, 30), bool)
    a[8:18, 8:18, 8:18] = True
    shift = 3
    b = np.roll(a, shift, axis=axis)
    assert hd95_mm(a, b, spacing_zyx) == pytest.approx(shift * spacing_zyx[axis], rel=1e-5)
    assert hd95_mm(a, a, spacing_zyx) == pytest.approx(0.0)
    assert hd95_mm(a, np.zeros_like(a), spacing_zyx) is None


def test_compare_to_reference_per_segment():
    lab = _two_lungs()
    ref = lab.copy()
    ref[ref == LEFT_LUNG] = 0
    ref[2:18, 5:35, 37:57] = LEFT_LUNG  # left lung shifted 2 voxels (3.0 mm at 1.5 mm)
    m = compare_to_reference(_img(lab), _img(ref))
    assert m["dice"]["Right lung"] == 1.0
    assert m["dice"]["Left lung"] == pytest.approx(2 * 16 * 30 * 18 / (2 * 16 * 30 * 20))
    assert m["hd95_mm"]["Left lung"] == pytest.approx(3.0, rel=1e-5)
    assert m["dice"]["Lesion"] is None and m["hd95_mm"]["Lesion"] is None


# --- reference files --------------------------------------------------------------------------


def test_parse_reference_labels_syntax():
    assert parse_reference_labels("1=1,2=2,3=3") == {1: 1, 2: 2, 3: 3}
    assert parse_reference_labels("13,14=1;15,16,17=2") == {13: 1, 14: 1, 15: 2, 16: 2, 17: 2}
    assert parse_reference_labels("13-14=left; 15-17=right; 20=lesion") == {
        13: 1, 14: 1, 15: 2, 16: 2, 17: 2, 20: 3}
    for bad, needle in [("1=7", "target 7"), ("1=1;;2=2", "cannot parse"), ("5-3=1", "backwards"),
                        ("1=1;1=2", "mapped twice"), ("", "empty")]:
        with pytest.raises(InputError, match=needle):
            parse_reference_labels(bad)


def test_reference_on_other_grid_is_resampled_and_mapped(tmp_path):
    lab = _two_lungs(shape=(20, 40, 60))
    grid = _img(np.zeros_like(lab), spacing=(1.5, 1.5, 2.5))
    # the same segmentation as a TotalSegmentator-like label file at twice the in-plane spacing
    ref_arr = lab[:, ::2, ::2].astype(np.int16)
    ref_arr[ref_arr == LEFT_LUNG] = 13
    ref_arr[ref_arr == RIGHT_LUNG] = 15
    ref = _img(ref_arr, spacing=(3.0, 3.0, 2.5), origin=(0.75, 0.75, 0.0))
    p = tmp_path / "ref.nii.gz"
    sitk.WriteImage(ref, str(p))
    with pytest.raises(InputError, match=r"values \[13, 15\].*--reference-labels"):
        load_reference(p, grid)
    out = load_reference(p, grid, parse_reference_labels("13,14=1;15-17=2"))
    assert out.GetSize() == grid.GetSize() and out.GetSpacing() == grid.GetSpacing()
    m = compare_to_reference(_img(lab, spacing=(1.5, 1.5, 2.5)), out)
    assert m["dice"]["Left lung"] > 0.9 and m["dice"]["Right lung"] > 0.9


def test_reference_in_another_region_is_refused(tmp_path):
    lab = _two_lungs()
    grid = _img(np.zeros_like(lab))
    far = _img(lab, origin=(500.0, 0.0, 0.0))
    p = tmp_path / "far.nrrd"
    sitk.WriteImage(far, str(p))
    with pytest.raises(InputError, match=r"different physical region: only 0 %"):
        load_reference(p, grid)
    empty = tmp_path / "empty.nrrd"
    sitk.WriteImage(_img(np.zeros_like(lab)), str(empty))
    with pytest.raises(InputError, match="no voxels with a mapped label"):
        load_reference(empty, grid)
