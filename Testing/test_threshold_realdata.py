"""The threshold method on the real CTs in ``../shared/data`` (skipped when absent).

Slice-level lesion localisation is measured against the radiologists' slice
labels of COVID-CT-MD (a slice is positive when it holds >= 50 mm³ of lesion);
``benchmarks/eval_threshold_slices.py`` prints the full table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.threshold.lesions import find_lesions
from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

pytestmark = pytest.mark.realdata

CASES = ("P001", "cap001", "normal001")


@pytest.fixture(scope="module")
def covid_ct_md(shared_data):
    folder = shared_data / "covid-ct-md"
    labels = json.loads((folder / "labels.json").read_text())["cases"]
    cache = {}

    def get(case: str):
        if case not in cache:
            image = sitk.ReadImage(str(folder / labels[case]["file"]))
            cache[case] = (image, segment_lungs(image), labels[case])
        return cache[case]

    return get


def _centre_x_mm(labels: sitk.Image, value: int) -> float:
    zyx = np.argwhere(sitk.GetArrayViewFromImage(labels) == value).mean(axis=0)
    return labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])[0]


@pytest.mark.parametrize("case", CASES)
def test_two_lungs_of_plausible_volume_on_the_patient_sides(covid_ct_md, case):
    _, lungs, _ = covid_ct_md(case)
    ext = lung_extent(lungs)
    # Adult lungs at inspiration: about 1-4.5 L each.
    assert 1000.0 <= ext.left_ml <= 4500.0 and 1000.0 <= ext.right_ml <= 4500.0
    assert _centre_x_mm(lungs, LEFT_LUNG) > _centre_x_mm(lungs, RIGHT_LUNG)  # LPS +x = patient's left
    assert len(ext.z_indices) >= 100  # 2 mm slices over a ~ 25 cm lung height


def _slice_scores(image, lungs, truth) -> tuple[float, float]:
    lesions = sitk.GetArrayFromImage(find_lesions(image, lungs)) > 0
    positive = lesions.sum(axis=(1, 2)) * float(np.prod(image.GetSpacing())) >= 50.0
    truth = np.asarray(truth, dtype=bool)
    return float((positive & truth).sum() / truth.sum()), float((~positive & ~truth).sum() / (~truth).sum())


@pytest.mark.parametrize("case", ("P001", "cap001"))
def test_lesion_slices_match_radiologist_labels(covid_ct_md, case):
    image, lungs, info = covid_ct_md(case)
    sensitivity, specificity = _slice_scores(image, lungs, info["slice_infection_label_by_nifti_z"])
    assert sensitivity >= 0.8 and specificity >= 0.7, (sensitivity, specificity)


def test_normal_scan_has_next_to_no_lesion(covid_ct_md):
    image, lungs, _ = covid_ct_md("normal001")
    lesions = sitk.GetArrayFromImage(find_lesions(image, lungs)) > 0
    assert lesions.sum() * float(np.prod(image.GetSpacing())) / 1000.0 < 5.0


@pytest.mark.parametrize(
    "flip,perm",
    [((True, False, False), (0, 1, 2)), ((False, True, True), (0, 1, 2)), ((False, False, False), (2, 0, 1))],
)
def test_real_ct_in_other_orientations_gives_the_same_sides(covid_ct_md, flip, perm):
    """Flipping/permuting the array (geometry kept) must not change which physical voxels are left/right."""
    image, lungs, _ = covid_ct_md("normal001")
    turned = sitk.PermuteAxes(sitk.Flip(image, flip), perm)
    assert turned.GetDirection() != image.GetDirection()
    back = sitk.Resample(segment_lungs(turned), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayFromImage(lungs), sitk.GetArrayFromImage(back)
    for value in (LEFT_LUNG, RIGHT_LUNG):
        dice = 2.0 * np.sum((a == value) & (b == value)) / (np.sum(a == value) + np.sum(b == value))
        assert dice >= 0.97, (value, dice)


def test_example_ct_sides_agree_with_totalsegmentator_lobes(shared_data):
    folder = shared_data / "totalsegmentator"
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"))  # direction diag(-1, -1, 1)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_v1_full112slices_a7eec60.nii.gz")))
    pred = sitk.GetArrayFromImage(segment_lungs(image))
    ref_left, ref_right = np.isin(ref, (13, 14)), np.isin(ref, (15, 16, 17))
    assert np.sum(ref_left & (pred == RIGHT_LUNG)) == 0 and np.sum(ref_right & (pred == LEFT_LUNG)) == 0
    for mine, theirs in ((pred == LEFT_LUNG, ref_left), (pred == RIGHT_LUNG, ref_right)):
        assert 2.0 * np.sum(mine & theirs) / (mine.sum() + theirs.sum()) >= 0.85


def test_lidc_slices_lung_counts_near_lungmask_r231(shared_data):
    folder = shared_data / "lidc-lungmask"
    reference = json.loads((folder / "reference.json").read_text())
    assert "64752" in reference["reference_from_upstream_test"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    pred = sitk.GetArrayFromImage(segment_lungs(reader.Execute()))
    # R231 (a model) includes the dense dependent lung that a threshold partly misses: within 20 %.
    assert abs(np.sum(pred == RIGHT_LUNG) / 64752 - 1.0) <= 0.2
    assert abs(np.sum(pred == LEFT_LUNG) / 36536 - 1.0) <= 0.2


def test_full_resolution_dicom_agrees_with_the_256_nifti(shared_data, covid_ct_md):
    from CovidCTAnalysisLib.loading.load import load_ct

    volume = load_ct(shared_data / "covid-ct-md" / "dicom" / "P001")
    full = lung_extent(segment_lungs(volume.image))
    small = lung_extent(covid_ct_md("P001")[1])
    assert abs(full.left_ml / small.left_ml - 1.0) <= 0.05
    assert abs(full.right_ml / small.right_ml - 1.0) <= 0.05


def test_chest_crop_without_body_outline_still_gives_both_lungs(shared_data):
    """A contrast chest CT cropped inside the body: lungs touch the image border, no room air."""
    image = sitk.ReadImage(str(shared_data / "totalsegmentator" / "pulmonary_report_ct_cropped_chestCTA.nii.gz"))
    lungs = segment_lungs(image)
    ext = lung_extent(lungs)
    # The crop holds the medial parts of both lungs (~ 0.5-1.5 L each).
    assert 300.0 <= ext.left_ml <= 2000.0 and 300.0 <= ext.right_ml <= 2000.0
    assert _centre_x_mm(lungs, LEFT_LUNG) > _centre_x_mm(lungs, RIGHT_LUNG)
