"""HU-threshold lesion candidates (``lesions_threshold``) on synthetic phantoms with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.loading.volume import voxel_volume_ml
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.threshold.lesions import find_lesions, lesion_mask_array, threshold_labelmap
from CovidCTAnalysisLib.threshold.lungs import segment_lungs

# ~ 3 mm voxels: coarse enough to be quick, fine enough for vessels to look like vessels.
SIZE = (128, 128, 80)


def _volumes_ml(ph, labels: np.ndarray) -> tuple[float, float, float]:
    """(truth lesion, found lesion, overlap) in mL."""
    truth = sitk.GetArrayViewFromImage(ph.truth) == LESION
    found = labels == LESION
    v = voxel_volume_ml(ph.image)
    return truth.sum() * v, found.sum() * v, (truth & found).sum() * v


@pytest.mark.parametrize("seed", [0, 1])
def test_covid_lesions_are_found(seed):
    ph = make_phantom("covid", seed=seed, size=SIZE)
    labels = sitk.GetArrayFromImage(threshold_labelmap(ph.image))
    truth_ml, found_ml, overlap_ml = _volumes_ml(ph, labels)
    assert truth_ml > 10.0
    assert overlap_ml >= 0.6 * truth_ml  # sensitivity
    assert overlap_ml >= 0.6 * found_ml  # what is found is lesion, not vessels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_lungs_have_next_to_no_lesion(seed):
    ph = make_phantom("normal", seed=seed, size=SIZE)
    labels = sitk.GetArrayFromImage(threshold_labelmap(ph.image))
    _, found_ml, _ = _volumes_ml(ph, labels)
    lung_ml = np.count_nonzero(labels > 0) * voxel_volume_ml(ph.image)
    assert found_ml <= 0.002 * lung_ml  # vessels, airways and pleura are suppressed


def test_pneumonia_finds_real_consolidation():
    """What is found lies in the truth lesion.

    Known limit (module docstring): consolidation that fills the lung out to
    the chest wall is left out of the threshold lungs, so only the part
    enclosed by aerated lung can be found; this test does not ask for more.
    """
    ph = make_phantom("pneumonia", seed=1, size=SIZE)
    labels = sitk.GetArrayFromImage(threshold_labelmap(ph.image))
    truth_ml, found_ml, overlap_ml = _volumes_ml(ph, labels)
    assert truth_ml > 50.0
    assert found_ml >= 1.0
    assert overlap_ml >= 0.5 * found_ml


def test_threshold_labelmap_is_lungs_plus_lesions():
    ph = make_phantom("covid", seed=2, size=SIZE)
    lungs = segment_lungs(ph.image)
    lesions = find_lesions(ph.image, lungs)
    labels = threshold_labelmap(ph.image)
    assert labels.GetSize() == ph.image.GetSize() and labels.GetOrigin() == ph.image.GetOrigin()
    assert labels.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(labels)
    lung_arr = sitk.GetArrayFromImage(lungs)
    lesion_arr = sitk.GetArrayFromImage(lesions)
    assert set(np.unique(arr)) <= {0, LEFT_LUNG, RIGHT_LUNG, LESION}
    assert set(np.unique(lesion_arr)) <= {0, 1} and lesion_arr.any()
    # Lesion voxels are lung voxels that took label 3; everything else is the lungs unchanged.
    assert np.all(lung_arr[lesion_arr > 0] > 0)
    np.testing.assert_array_equal(arr == LESION, lesion_arr > 0)
    np.testing.assert_array_equal(np.where(arr == LESION, lung_arr, arr), lung_arr)


def test_find_lesions_accepts_lungs_on_another_grid():
    ph = make_phantom("covid", seed=0, size=SIZE)
    lungs = segment_lungs(ph.image)
    coarse = sitk.Resample(
        lungs,
        [s // 2 for s in lungs.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        lungs.GetOrigin(),
        [2 * s for s in lungs.GetSpacing()],
        lungs.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    on_grid = sitk.GetArrayFromImage(find_lesions(ph.image, lungs)) > 0
    off_grid = sitk.GetArrayFromImage(find_lesions(ph.image, coarse)) > 0
    assert off_grid.shape == on_grid.shape
    assert 2 * np.count_nonzero(on_grid & off_grid) >= 0.7 * (on_grid.sum() + off_grid.sum())


def test_empty_lungs_give_no_lesions():
    ph = make_phantom("covid", seed=0, size=(64, 64, 40))
    empty = sitk.Image(ph.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ph.image)
    assert not sitk.GetArrayViewFromImage(find_lesions(ph.image, empty)).any()


def _ball_scene(radius_vox: int, hu_inside: float) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm cube of lung (-850 HU) with a centred ball of ``hu_inside``."""
    n = 48
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    hu = np.full((n, n, n), -850.0, dtype=np.float32)
    hu[zz**2 + yy**2 + xx**2 <= radius_vox**2] = hu_inside
    lung = np.zeros((n, n, n), dtype=bool)
    lung[2:-2, 2:-2, 2:-2] = True
    return hu, lung


def test_rule_keeps_a_ground_glass_ball_and_drops_a_vessel():
    hu, lung = _ball_scene(6, -550.0)  # 24 mm ground-glass nodule
    assert lesion_mask_array(hu, lung, 2.0).sum() * 8.0 >= 0.8 * (4 / 3 * np.pi * 12.0**3)
    vessel = np.full_like(hu, -850.0)
    vessel[:, 23:25, 23:25] = 40.0  # a 4 mm vessel running through the lung
    assert not lesion_mask_array(vessel, lung, 2.0).any()


def test_rule_drops_lesions_below_the_minimum_size():
    hu, lung = _ball_scene(2, -450.0)  # 4 mm radius: ~ 0.3 mL
    assert not lesion_mask_array(hu, lung, 2.0).any()


def test_labelmap_does_not_depend_on_freed_memory(tmp_path):
    """Dask workers return freed memory to the OS at once (MALLOC_TRIM_THRESHOLD_); a numpy view of a temporary
    sitk image then read zeros and the lesions vanished (covidct batch found 0 % everywhere)."""
    import os
    import subprocess
    import sys

    ph = make_phantom("covid", 0, size=(96, 96, 64))
    sitk.WriteImage(ph.image, str(tmp_path / "ct.nii.gz"))
    here = sitk.GetArrayFromImage(threshold_labelmap(ph.image))
    code = ("import sys, SimpleITK as sitk\n"
            "from CovidCTAnalysisLib.threshold.lesions import threshold_labelmap\n"
            "sitk.WriteImage(threshold_labelmap(sitk.ReadImage(sys.argv[1])), sys.argv[2])\n")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "0"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ct.nii.gz"), str(tmp_path / "lab.nii.gz")],
                   env=env, check=True, timeout=300)
    there = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "lab.nii.gz")))
    assert (here == LESION).sum() > 0
    np.testing.assert_array_equal(there, here)
