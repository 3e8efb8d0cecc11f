"""HU-threshold lungs (``lungs_threshold``) on synthetic phantoms with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.threshold.lungs import compare_lungs, lung_extent, segment_lungs

SIZE = (96, 96, 56)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _side_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice per side on the voxels whose truth side is known (truth lesion voxels are left out)."""
    known = truth != LESION
    return (
        _dice((pred == LEFT_LUNG) & known, truth == LEFT_LUNG),
        _dice((pred == RIGHT_LUNG) & known, truth == RIGHT_LUNG),
    )


def _centre_x_mm(labels: sitk.Image, value: int) -> float:
    """Physical LPS x of a label's centre (+ = patient's left)."""
    arr = sitk.GetArrayViewFromImage(labels)
    zyx = np.argwhere(arr == value).mean(axis=0)
    return labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])[0]


@pytest.fixture(scope="module")
def normal_phantom():
    return make_phantom("normal", seed=0, size=SIZE)


@pytest.mark.parametrize("kind,seed", [("normal", 0), ("covid", 1), ("pneumonia", 2)])
def test_lungs_match_truth(kind, seed):
    ph = make_phantom(kind, seed=seed, size=SIZE)
    pred = sitk.GetArrayFromImage(segment_lungs(ph.image))
    truth = sitk.GetArrayFromImage(ph.truth)
    assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, LEFT_LUNG, RIGHT_LUNG}
    # Lesions are part of the lungs for this comparison.
    assert _dice(pred > 0, truth > 0) >= 0.9
    left, right = _side_dice(pred, truth)
    assert left >= 0.9 and right >= 0.9


def test_airways_are_excluded(normal_phantom):
    pred = segment_lungs(normal_phantom.image)
    arr = sitk.GetArrayViewFromImage(pred)
    for name in ("trachea", "carina", "right_main_bronchus", "left_main_bronchus"):
        index = pred.TransformPhysicalPointToIndex(normal_phantom.landmarks[name])
        assert arr[index[2], index[1], index[0]] == 0, name


# Signed axis permutations (columns = LPS direction of index axes x, y, z): identity, single flips,
# all flips, swaps and cycles, some with flips.
def _direction(perm: tuple[int, int, int], signs: tuple[int, int, int]) -> tuple[float, ...]:
    d = np.zeros((3, 3))
    for j, (a, s) in enumerate(zip(perm, signs, strict=True)):
        d[a, j] = s
    return tuple(float(v) for v in d.ravel())


ORIENTATIONS = [
    ((0, 1, 2), (1, 1, 1)),
    ((0, 1, 2), (-1, 1, 1)),
    ((0, 1, 2), (1, -1, 1)),
    ((0, 1, 2), (1, 1, -1)),
    ((0, 1, 2), (-1, -1, -1)),
    ((1, 0, 2), (1, 1, 1)),
    ((0, 2, 1), (1, -1, 1)),
    ((2, 1, 0), (-1, 1, 1)),
    ((1, 2, 0), (1, 1, -1)),
    ((2, 0, 1), (-1, -1, 1)),
]


@pytest.mark.parametrize("perm,signs", ORIENTATIONS)
def test_left_lung_is_on_patient_left_for_any_orientation(perm, signs):
    ph = make_phantom("normal", seed=3, size=(72, 72, 72), direction=_direction(perm, signs))
    lungs = segment_lungs(ph.image)
    assert lungs.GetSize() == ph.image.GetSize() and lungs.GetDirection() == ph.image.GetDirection()
    assert _centre_x_mm(lungs, LEFT_LUNG) > _centre_x_mm(lungs, RIGHT_LUNG)
    left, right = _side_dice(sitk.GetArrayFromImage(lungs), sitk.GetArrayFromImage(ph.truth))
    assert left >= 0.85 and right >= 0.85


def _bridge_lungs(image: sitk.Image, truth: np.ndarray) -> tuple[sitk.Image, int]:
    """Fill the mediastinal gap where the lungs come closest with lung-density tissue (identity direction).

    Returns the bridged image and the number of slices bridged.
    """
    arr = sitk.GetArrayFromImage(image)
    count = 0
    for z in range(truth.shape[0]):
        best = None
        for y in range(truth.shape[1]):
            right = np.nonzero(truth[z, y] == RIGHT_LUNG)[0]
            left = np.nonzero(truth[z, y] == LEFT_LUNG)[0]
            if right.size and left.size and (best is None or left.min() - right.max() < best[0]):
                best = (left.min() - right.max(), y, right.max(), left.min())
        if best is not None and best[0] < 20:
            _, y, x0, x1 = best
            arr[z, max(0, y - 2) : y + 3, x0 : x1 + 1] = -850
            count += 1
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out, count


def test_oblique_direction_keeps_sides():
    """A 20-degree rotation about the patient's S-I axis and 10 degrees about L-R (gantry tilt)."""
    a, b = np.radians(20.0), np.radians(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    ph = make_phantom("normal", seed=3, size=(80, 80, 64), direction=tuple((rz @ rx).ravel()))
    lungs = segment_lungs(ph.image)
    assert _centre_x_mm(lungs, LEFT_LUNG) > _centre_x_mm(lungs, RIGHT_LUNG)
    left, right = _side_dice(sitk.GetArrayFromImage(lungs), sitk.GetArrayFromImage(ph.truth))
    assert left >= 0.85 and right >= 0.85


def test_touching_lungs_are_split_by_side(normal_phantom, monkeypatch):
    """Join the lungs with lung-density tissue where they come closest: still split by side."""
    import CovidCTAnalysisLib.threshold.lung_sides as lung_sides

    truth = sitk.GetArrayFromImage(normal_phantom.truth)
    bridged, n_slices = _bridge_lungs(normal_phantom.image, truth)
    assert n_slices >= 5
    splits = []
    real_split = lung_sides._split_by_erosion
    monkeypatch.setattr(lung_sides, "_split_by_erosion", lambda *a: splits.append(1) or real_split(*a))
    pred_img = segment_lungs(bridged)
    assert splits, "the bridged lungs should have formed one piece that had to be split"
    left, right = _side_dice(sitk.GetArrayFromImage(pred_img), truth)
    assert left >= 0.9 and right >= 0.9
    assert _centre_x_mm(pred_img, LEFT_LUNG) > _centre_x_mm(pred_img, RIGHT_LUNG)


def test_no_lungs_raises_input_error():
    water = sitk.Image([64, 64, 40], sitk.sitkInt16)  # 0 HU everywhere: a body with no air in it
    water.SetSpacing([3.0, 3.0, 3.0])
    with pytest.raises(InputError, match="no lungs found"):
        segment_lungs(water)


def test_lung_extent_matches_truth(normal_phantom):
    truth = sitk.GetArrayFromImage(normal_phantom.truth) > 0
    ext = lung_extent(segment_lungs(normal_phantom.image), min_area_mm2=100.0)
    sx, sy, _ = normal_phantom.image.GetSpacing()
    truth_z = set(np.nonzero(truth.sum(axis=(1, 2)) * sx * sy >= 100.0)[0].tolist())
    assert len(set(ext.z_indices) ^ truth_z) <= 2
    assert ext.axial_axis == 0 and ext.axial_indices == ext.z_indices
    zz, yy, xx = np.nonzero(truth)
    x0, y0, z0, x1, y1, z1 = ext.bbox_index
    assert abs(x0 - xx.min()) <= 2 and abs(x1 - (xx.max() + 1)) <= 2
    assert abs(y0 - yy.min()) <= 2 and abs(y1 - (yy.max() + 1)) <= 2
    assert abs(z0 - zz.min()) <= 2 and abs(z1 - (zz.max() + 1)) <= 2
    assert ext.left_ml > 0 and ext.right_ml > ext.left_ml  # the right lung is the larger one


@pytest.mark.parametrize("perm", [(2, 1, 0), (0, 2, 1)])
def test_lung_extent_reports_axial_axis_for_permuted_images(perm):
    ph = make_phantom("normal", seed=3, size=(64, 64, 64), direction=_direction(perm, (1, 1, 1)))
    ext = lung_extent(segment_lungs(ph.image))
    # numpy axis whose index axis points along LPS z (superior-inferior)
    expected = 2 - perm.index(2)
    assert ext.axial_axis == expected
    truth = sitk.GetArrayFromImage(ph.truth) > 0
    others = tuple(a for a in range(3) if a != expected)
    truth_slices = set(np.nonzero(truth.any(axis=others))[0].tolist())
    assert set(ext.axial_indices) <= truth_slices and len(ext.axial_indices) >= 0.8 * len(truth_slices)


def test_lung_extent_of_empty_labels_raises():
    empty = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    with pytest.raises(InputError, match="empty"):
        lung_extent(empty)


def test_compare_lungs_flags_large_disagreement(normal_phantom):
    lungs = segment_lungs(normal_phantom.image)
    same = compare_lungs(lungs, lungs)
    assert same["left"] == 0.0 and same["right"] == 0.0 and not same["flag"]
    assert "agree" in same["message"]

    # A "model" that lost the lower 40 % of the left lung.
    arr = sitk.GetArrayFromImage(lungs)
    zs = np.nonzero((arr == LEFT_LUNG).any(axis=(1, 2)))[0]
    cut = zs[int(0.4 * len(zs))]
    arr[:cut][arr[:cut] == LEFT_LUNG] = 0
    shrunk = sitk.GetImageFromArray(arr)
    shrunk.CopyInformation(lungs)
    res = compare_lungs(shrunk, lungs)
    assert res["flag"] and res["left"] > 0.15 and res["right"] == 0.0
    assert "DISAGREE" in res["message"] and "left lung" in res["message"]


def test_compare_lungs_counts_model_lesions_as_lung(normal_phantom):
    lungs = segment_lungs(normal_phantom.image)
    arr = sitk.GetArrayFromImage(lungs)
    # Turn a block of the right lung into lesion: the right lung volume must not change.
    zz, yy, xx = np.nonzero(arr == RIGHT_LUNG)
    block = tuple(slice(int(np.median(v)) - 3, int(np.median(v)) + 3) for v in (zz, yy, xx))
    model = arr.copy()
    region = model[block]
    region[region == RIGHT_LUNG] = LESION
    model_img = sitk.GetImageFromArray(model)
    model_img.CopyInformation(lungs)
    res = compare_lungs(model_img, lungs)
    assert res["right"] == 0.0 and res["left"] == 0.0 and not res["flag"]


def test_orientation_list_is_distinct():
    dirs = {_direction(p, s) for p, s in ORIENTATIONS}
    assert len(dirs) == len(ORIENTATIONS) >= 8
    assert all(sorted(p) == [0, 1, 2] for p, _ in ORIENTATIONS)


def test_split_left_right_cuts_a_wide_bridge_at_its_thinnest_column(monkeypatch):
    """Thin lungs joined by a bridge thicker than they are: erosion cannot split them, the per-slice cut must."""
    import CovidCTAnalysisLib.threshold.lung_sides as lung_sides

    shape = (20, 60, 100)  # (z, y, x) at 2 mm; x increases to the patient's left
    body = np.zeros(shape, dtype=bool)
    body[:, 5:55, 5:95] = True
    lung = np.zeros(shape, dtype=bool)
    lung[:, 10:50, 25:35] = True  # right lung (small x), 20 mm wide
    lung[:, 10:50, 65:75] = True  # left lung
    lung[:, 20:50, 35:65] = True  # a 60 mm wide, 60 mm tall bridge between them
    cuts = []
    real_cut = lung_sides._split_by_midline_cut
    monkeypatch.setattr(lung_sides, "_split_by_midline_cut", lambda *a: cuts.append(1) or real_cut(*a))
    labels = lung_sides.split_left_right(lung, body, (2.0, 2.0, 2.0))
    assert cuts, "erosion should not have separated this piece"
    assert np.all(labels[:, 10:50, 25:35] == RIGHT_LUNG)
    assert np.all(labels[:, 10:50, 65:75] == LEFT_LUNG)
    assert set(np.unique(labels[lung])) == {LEFT_LUNG, RIGHT_LUNG} and not labels[~lung].any()
