"""Synthetic chest phantoms: determinism, labels per kind, orientation, HU bands, files, CLI."""

from __future__ import annotations

import argparse
import functools

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.cli.phantom import add_parser, run
from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, GGO_BAND_HU, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError, OutputError
from CovidCTAnalysisLib.phantom.generator import KINDS, Phantom, make_phantom, random_direction, write_phantom
from scipy import ndimage

SMALL = (72, 72, 48)


@functools.lru_cache(maxsize=None)
def cached(kind: str, seed: int, size=SMALL, spacing=None, direction=None) -> Phantom:
    return make_phantom(kind, seed, size=size, spacing=spacing, direction=direction)


def arrays(ph: Phantom) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.truth)


def physical_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """LPS mm of the voxels in a (z, y, x) mask, through the image geometry."""
    idx = np.argwhere(mask)[:, ::-1].astype(float)  # (x, y, z) index order
    d = np.array(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ d.T


def centroid(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)[:, ::-1].mean(axis=0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx)))


# --- determinism ----------------------------------------------------------------------------------

def test_same_seed_gives_identical_phantom():
    a = make_phantom("covid", 3, size=(56, 56, 40))
    b = make_phantom("covid", 3, size=(56, 56, 40))
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.image.GetSpacing() == b.image.GetSpacing()
    assert a.image.GetOrigin() == b.image.GetOrigin()


def test_different_seeds_differ_in_grid_and_lesions():
    a, b = cached("covid", 1), cached("covid", 2)
    assert a.image.GetSpacing() != b.image.GetSpacing()  # size forced: spacing follows the seed
    ta, tb = arrays(a)[1], arrays(b)[1]
    assert not np.array_equal(ta == LESION, tb == LESION)
    assert a.info["noise_sd_hu"] != b.info["noise_sd_hu"]


@pytest.mark.parametrize("seed", [0, 5])
def test_unforced_grid_follows_the_seed_within_documented_ranges(seed):
    ph = make_phantom("normal", seed)
    sx, sy, sz = ph.image.GetSpacing()
    assert 1.2 <= sx <= 2.0 and sx == sy
    assert 1.5 <= sz <= 5.0
    fov = np.asarray(ph.image.GetSize()) * np.asarray(ph.image.GetSpacing())
    assert 320 <= fov[0] <= 450 and 240 <= fov[2] <= 360
    assert ph.image.GetDirection() == tuple(np.eye(3).ravel())


def test_forcing_spacing_picks_the_size():
    ph = make_phantom("normal", 4, spacing=(4.0, 4.0, 6.0))
    fov = np.asarray(ph.image.GetSize()) * 4.0
    assert 320 <= fov[0] <= 450
    assert ph.image.GetSpacing() == (4.0, 4.0, 6.0)


# --- labels per kind ------------------------------------------------------------------------------

def sides_of_lesion(ph: Phantom) -> tuple[int, int]:
    """Lesion voxels on the patient's left and right of the midline between the lung centroids."""
    _, t = arrays(ph)
    mid = 0.5 * (centroid(ph.truth, t == LEFT_LUNG)[0] + centroid(ph.truth, t == RIGHT_LUNG)[0])
    x = physical_points(ph.truth, t == LESION)[:, 0]
    return int(np.sum(x > mid)), int(np.sum(x <= mid))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covid_lesions_are_bilateral_lower_and_peripheral(seed):
    ph = cached("covid", seed)
    img, t = arrays(ph)
    left, right = sides_of_lesion(ph)
    assert left > 0 and right > 0
    lungs = t > 0
    z_lung = physical_points(ph.truth, lungs)[:, 2]
    z_mid = 0.5 * (z_lung.min() + z_lung.max())
    z_lesion = physical_points(ph.truth, t == LESION)[:, 2]
    assert np.mean(z_lesion < z_mid) > 0.55  # lower-zone predominant (LPS +z is superior)
    depth = ndimage.distance_transform_edt(lungs, sampling=ph.truth.GetSpacing()[::-1])
    assert np.mean(depth[t == LESION]) < np.mean(depth[lungs])  # sub-pleural
    assert GGO_BAND_HU[0] <= img[t == LESION].mean() <= GGO_BAND_HU[1]  # ground glass


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 39])
def test_pneumonia_is_mostly_one_lung_and_consolidated(seed):
    # seed 39 once let a large consolidation near the midline spill into the other lung
    ph = make_phantom("pneumonia", seed, size=(64, 64, 40), direction=random_direction(seed)) if seed == 39 else cached("pneumonia", seed)
    img, t = arrays(ph)
    left, right = sides_of_lesion(ph)
    assert max(left, right) >= 0.8 * (left + right) > 0
    assert CONSOLIDATION_BAND_HU[0] <= np.median(img[t == LESION]) <= CONSOLIDATION_BAND_HU[1]
    assert np.median(img[t == LESION]) > -150  # dense consolidation, not ground glass


@pytest.mark.parametrize("seed", [0, 1])
def test_normal_has_no_lesion(seed):
    ph = cached("normal", seed)
    t = arrays(ph)[1]
    assert not np.any(t == LESION)
    assert ph.lesion_volume_ml() == 0.0
    assert set(np.unique(t)) == {0, LEFT_LUNG, RIGHT_LUNG}


def test_lesion_voxels_are_inside_the_lungs_of_the_same_patient():
    # same seed => same anatomy for every kind: lesions only relabel lung voxels
    normal, covid = arrays(cached("normal", 2))[1], arrays(cached("covid", 2))[1]
    assert np.all(normal[covid == LESION] > 0)
    assert np.array_equal(normal > 0, covid > 0)


# --- anatomy and HU -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_right_lung_is_larger_than_left(seed):
    ph = cached("normal", seed)
    assert ph.lung_volume_ml(RIGHT_LUNG) > 1.05 * ph.lung_volume_ml(LEFT_LUNG)
    total = ph.lung_volume_ml(RIGHT_LUNG) + ph.lung_volume_ml(LEFT_LUNG)
    assert 3000 < total < 9000  # adult lungs at inspiration, mL


def test_tissue_hu_bands():
    ph = cached("normal", 1)
    img, t = arrays(ph)
    assert -900 <= img[t > 0].mean() <= -790
    body = img > -500
    assert np.count_nonzero(img > 500) > 50  # cortical bone
    fat = np.count_nonzero((img > -130) & (img < -70))
    soft = np.count_nonzero((img > 10) & (img < 80))
    assert fat > 0.02 * body.sum() and soft > 0.2 * body.sum()
    assert img.min() >= -1024 and img.max() <= 3071 and img.dtype == np.int16


def test_vessels_make_some_lung_voxels_dense():
    img, t = arrays(cached("normal", 0, size=(128, 128, 64)))
    dense = np.mean(img[t > 0] > -300)
    assert 0.005 < dense < 0.12


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_noise_sd_follows_the_seed(seed):
    ph = make_phantom("normal", seed, spacing=(1.1, 1.1, 5.0))  # noise_sd_hu is the pixel SD of the (correlated) noise
    img = arrays(ph)[0].astype(float)
    k, j, i = ph.image.TransformPhysicalPointToIndex(ph.landmarks["liver"])[::-1]
    roi = img[max(k - 2, 0):k + 3, j - 4:j + 5, i - 4:i + 5]
    assert 40 <= roi.mean() <= 75  # liver, non-contrast
    assert 0.7 * ph.info["noise_sd_hu"] <= roi.std() <= 1.3 * ph.info["noise_sd_hu"]


@pytest.mark.parametrize("name", ["trachea", "right_main_bronchus", "left_main_bronchus"])
def test_airways_are_air_but_not_lung(name):
    ph = cached("normal", 3, size=(96, 96, 64))
    point = ph.landmarks[name]
    idx = ph.image.TransformPhysicalPointToIndex(point)
    assert ph.truth[idx] == 0
    assert ph.image[idx] < -600
    if name != "trachea":  # the distal main bronchi lie inside the lung's outline: lung all round
        t = arrays(ph)[1]
        near = np.linalg.norm(physical_points(ph.truth, t > 0) - np.asarray(point), axis=1) < 12.0
        assert np.count_nonzero(near) > 5


# --- orientation ----------------------------------------------------------------------------------

def _perm(order, signs):
    d = np.zeros((3, 3))
    for j, (a, s) in enumerate(zip(order, signs, strict=True)):
        d[a, j] = s
    return tuple(float(v) for v in d.ravel())


_c, _s = np.cos(np.deg2rad(25)), np.sin(np.deg2rad(25))
DIRECTIONS = [
    _perm((0, 1, 2), (1, 1, 1)),
    _perm((0, 1, 2), (-1, 1, 1)),
    _perm((0, 1, 2), (1, -1, 1)),
    _perm((0, 1, 2), (1, 1, -1)),
    _perm((0, 1, 2), (-1, -1, -1)),
    _perm((2, 0, 1), (1, 1, 1)),  # sagittal-like stack
    _perm((0, 2, 1), (1, -1, 1)),  # coronal-like stack
    _perm((1, 0, 2), (1, -1, 1)),  # x and y swapped
    _perm((2, 1, 0), (-1, 1, -1)),
    (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0),  # oblique: resampled path
]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_left_lung_is_on_the_patients_left_for_any_direction(direction):
    ph = make_phantom("covid", 6, size=(56, 56, 56), spacing=(6.0, 6.0, 6.0), direction=direction)
    img, t = arrays(ph)
    assert np.allclose(ph.image.GetDirection(), direction) and ph.truth.GetDirection() == ph.image.GetDirection()
    left, right = centroid(ph.truth, t == LEFT_LUNG), centroid(ph.truth, t == RIGHT_LUNG)
    assert left[0] > right[0] + 80  # LPS +x is the patient's left
    assert img[t == LEFT_LUNG].mean() < -600 and img[t == RIGHT_LUNG].mean() < -600  # image and truth agree
    # the same patient whatever the orientation: the grids hold the same points (isotropic, cubic,
    # same centre), so the truth resampled onto the identity grid matches it voxel for voxel
    ref = cached("covid", 6, size=(56, 56, 56), spacing=(6.0, 6.0, 6.0))
    back = sitk.Resample(ph.truth, ref.truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    agreement = np.mean(sitk.GetArrayFromImage(back) == arrays(ref)[1])
    signed_permutation = np.allclose(np.abs(np.array(direction)).reshape(3, 3).max(axis=0), 1.0)
    assert agreement == 1.0 if signed_permutation else agreement > 0.98


def test_random_direction_is_a_seeded_signed_permutation():
    seen = set()
    for seed in range(12):
        d = np.array(random_direction(seed)).reshape(3, 3)
        assert np.allclose(np.abs(d).sum(axis=0), 1) and np.allclose(d @ d.T, np.eye(3))
        assert random_direction(seed) == random_direction(seed)
        seen.add(random_direction(seed))
    assert random_direction(0) == tuple(np.eye(3).ravel())
    assert len(seen) >= 5


# --- bad arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(kind="flu", seed=0), "'flu'"),
        (dict(kind="covid", seed=-1), "-1"),
        (dict(kind="covid", seed=0, size=(0, 64, 64)), "(0, 64, 64)"),
        (dict(kind="covid", seed=0, size=(64, 64)), "(64, 64)"),
        (dict(kind="covid", seed=0, spacing=(1.0, -1.0, 1.0)), "-1.0"),
        (dict(kind="covid", seed=0, direction=(1.0, 0.0, 0.0) * 3), "orthonormal"),
        (dict(kind="covid", seed=0, direction=(1.0, 0.0)), "orthonormal"),
        (dict(kind="covid", seed=0, direction="sideways"), "sideways"),
        (dict(kind="covid", seed=0, size=(2048, 2048, 2048)), "voxels"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        make_phantom(**kwargs)
    assert isinstance(err.value, InputError)
    assert fragment in str(err.value)


def test_kinds():
    assert KINDS == ("normal", "pneumonia", "covid")


# --- files and CLI ------------------------------------------------------------------------------------

def test_write_phantom_round_trip_and_overwrite_refusal(tmp_path):
    ph = cached("covid", 0)
    paths = write_phantom(ph, tmp_path / "out")
    assert set(paths) == {"image", "truth"}
    img = sitk.ReadImage(str(paths["image"]))
    truth = sitk.ReadImage(str(paths["truth"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arrays(ph)[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(truth), arrays(ph)[1])
    assert img.GetPixelID() == sitk.sitkInt16 and truth.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(img.GetDirection(), ph.image.GetDirection())
    assert np.allclose(img.GetOrigin(), ph.image.GetOrigin(), atol=1e-3)
    before = paths["image"].read_bytes()
    other = cached("normal", 1)
    with pytest.raises(OutputError) as err:
        write_phantom(other, tmp_path / "out")
    assert str(paths["image"]) in str(err.value) or str(paths["truth"]) in str(err.value)
    assert paths["image"].read_bytes() == before
    write_phantom(other, tmp_path / "out", force=True)
    assert paths["image"].read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image.nii.gz", "truth.nii.gz"]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="covidct")
    add_parser(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(argv))


def test_cli_writes_both_files(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = _cli(["phantom", "--kind", "covid", "--seed", "1", "--output-dir", str(out), "--size", "48", "48", "32"])
    assert rc == 0
    img = sitk.ReadImage(str(out / "image.nii.gz"))
    assert img.GetSize() == (48, 48, 32)
    assert img.GetDirection() == pytest.approx(random_direction(1))  # orientation follows the seed
    assert sitk.ReadImage(str(out / "truth.nii.gz")).GetSize() == (48, 48, 32)
    text = capsys.readouterr().out
    assert "lesion" in text and "image.nii.gz" in text
    with pytest.raises(OutputError):
        _cli(["phantom", "--kind", "covid", "--seed", "1", "--output-dir", str(out), "--size", "48", "48", "32"])
    rc = _cli(["phantom", "--kind", "normal", "--seed", "1", "--output-dir", str(out), "--size", "48", "48", "32",
               "--identity-orientation", "--spacing", "7", "7", "9", "--force"])
    assert rc == 0
    img = sitk.ReadImage(str(out / "image.nii.gz"))
    assert img.GetDirection() == pytest.approx(tuple(np.eye(3).ravel()))
    assert img.GetSpacing() == pytest.approx((7.0, 7.0, 9.0))


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--seed", "-1"], "-1"),
        (["--seed", "2", "--size", "0", "48", "32"], "(0, 48, 32)"),
        (["--seed", "2", "--spacing", "1", "1", "-2"], "-2.0"),
    ],
)
def test_cli_refuses_bad_values_and_writes_nothing(tmp_path, extra, fragment):
    out = tmp_path / "ph"
    with pytest.raises(InputError) as err:
        _cli(["phantom", "--kind", "normal", "--output-dir", str(out), *extra])
    assert fragment in str(err.value)
    assert not out.exists()


def test_write_phantom_refuses_a_file_as_folder(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OutputError) as err:
        write_phantom(cached("normal", 0), blocker)
    assert str(blocker) in str(err.value)
    assert blocker.read_text() == "x"
