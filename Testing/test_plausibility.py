"""The plausibility guard (``results/plausibility.py``): each flag fires on a case built to trigger it
and stays quiet on a clean one; the training-side recorder puts the profile into a model's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.results import plausibility as guard
from CovidCTAnalysisLib.threshold.lungs import segment_lungs

SIZE = (96, 96, 64)


@pytest.fixture(scope="module")
def normal_cases():
    """Three normal phantoms with their threshold lungs; the first two are the "training" set."""
    out = []
    for seed in (0, 1, 2):
        ph = make_phantom("normal", seed=seed, size=SIZE)
        out.append((ph, segment_lungs(ph.image)))
    return out


def _with(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(np.clip(array, -1024, 3071).astype(np.int16))
    out.CopyInformation(image)
    return out


def test_noise_estimate_matches_known_gaussian_noise():
    rng = np.random.default_rng(0)
    hu = -850.0 + rng.normal(0.0, 30.0, (40, 60, 60))
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    lungs = sitk.GetImageFromArray(np.ones(hu.shape, np.uint8))
    profile = guard.input_profile(image, lungs)
    assert profile["noise_hu"] == pytest.approx(30.0, rel=0.1)
    assert profile["lung_hu_p50"] == pytest.approx(-850.0, abs=3.0)
    assert profile["lung_ml"] == pytest.approx(hu.size / 1000.0)
    assert profile["noise_texture"] == pytest.approx(1.0, abs=0.05)  # white noise
    # Noise correlated over neighbouring voxels (a smooth reconstruction kernel) has a higher texture ratio.
    smooth = sitk.SmoothingRecursiveGaussian(image, 1.0)
    assert guard.input_profile(smooth, lungs)["noise_texture"] > 1.3


def test_lesion_disagreement_fires_on_gross_difference_only():
    assert guard.lesion_disagreement(1280.0, 0.0) is not None  # the "1.28 L of lesion on a normal scan" case
    message = guard.lesion_disagreement(40.0, 600.0)
    assert message is not None and "40 mL" in message and "600 mL" in message
    assert guard.lesion_disagreement(100.0, 90.0) is None
    assert guard.lesion_disagreement(30.0, 0.0) is None  # both next to nothing: under the margin


def test_class_against_burden():
    normal_with_lesion = guard.class_burden_conflict("Normal", 0.8, {"segmenter": 15.0, "threshold method": 0.2})
    assert normal_with_lesion is not None and "15.0 %" in normal_with_lesion
    assert guard.class_burden_conflict("Normal", 0.8, {"segmenter": 0.5}) is None
    confident_empty = guard.class_burden_conflict("Pneumonia", 0.97, {"threshold method": 0.0})
    assert confident_empty is not None and "0.97" in confident_empty
    assert guard.class_burden_conflict("Pneumonia", 0.6, {"threshold method": 0.0}) is None  # not confident
    assert guard.class_burden_conflict("COVID-19", 0.99, {"segmenter": 3.0, "threshold method": 2.0}) is None


def test_out_of_distribution_fires_on_noise_and_density_shift(normal_cases):
    seen = guard.profile_range([guard.input_profile(ph.image, lungs) for ph, lungs in normal_cases[:2]])
    ph, lungs = normal_cases[2]
    assert guard.out_of_distribution(guard.input_profile(ph.image, lungs), seen, "m") is None  # unseen seed, same kind
    hu = sitk.GetArrayFromImage(ph.image).astype(np.float32)
    noisy = _with(ph.image, hu + np.random.default_rng(1).normal(0.0, 120.0, hu.shape))
    message = guard.out_of_distribution(guard.input_profile(noisy, lungs), seen, "test-model")
    assert message is not None and "noise_hu" in message and "test-model" in message
    lung = sitk.GetArrayViewFromImage(lungs) > 0
    denser = _with(ph.image, np.where(lung, hu + 200.0, hu))
    message = guard.out_of_distribution(guard.input_profile(denser, lungs), seen, "test-model")
    assert message is not None and "lung_hu_p50" in message and "noise_hu" not in message
    assert "lung_hu_p95" not in message  # recorded, not compared: lesions move it


@pytest.mark.slow
def test_check_model_result_quiet_on_clean_case_and_loud_on_a_bad_one():
    size = (128, 128, 80)
    trained = [make_phantom("covid", seed=seed, size=size).image for seed in (3, 4)]
    seen = guard.profile_range([guard.input_profile(image, segment_lungs(image)) for image in trained])
    ph = make_phantom("covid", seed=5, size=size)
    lungs = segment_lungs(ph.image)
    clean = guard.check_model_result(ph.image, lungs, label="COVID-19", probability=0.95, labelmap=ph.truth,
                                     model_profiles={"seg": seen, "old": None})
    assert clean["warnings"] == [], clean
    assert clean["threshold_lesion_ml"] > 0.2 * ph.lesion_volume_ml()  # the threshold candidates are counted
    assert clean["ood_unchecked"] == ["old"]
    # An "every lung voxel is lesion" segmentation called Normal: disagreement and class against burden.
    all_lesion = sitk.GetArrayFromImage(ph.truth)
    all_lesion[all_lesion > 0] = LESION
    bad = guard.check_model_result(ph.image, lungs, label="Normal", probability=0.7,
                                   labelmap=_with(ph.truth, all_lesion), model_profiles={})
    assert len(bad["warnings"]) == 2
    assert bad["warnings"][0].startswith("lesion volume") and bad["warnings"][1].startswith("class against")


def test_record_profile_writes_metadata(normal_cases, tmp_path):
    from CovidCTAnalysisLib import INTENDED_USE
    from CovidCTAnalysisLib.constants import CLASS_NAMES
    from CovidCTAnalysisLib.models.folder import save_model_folder
    from CovidCTAnalysisLib.models.metadata import read_metadata
    from CovidCTAnalysisLib.models.networks import build_classifier

    from training.input_profile import main

    meta = {"sha256": "0" * 64, "demo": True, "eval_metrics": {}, "intended_use": INTENDED_USE,
            "trained_on": "nothing", "training_data": {}, "id": "t", "version": "0.0.1", "task": "classification",
            "architecture": {"name": "resnet50", "kwargs": {}}, "labels": list(CLASS_NAMES),
            "preprocessing": {"input_size": 64}}
    save_model_folder(build_classifier(len(CLASS_NAMES)), meta, tmp_path / "m")
    paths = []
    for i, (ph, _) in enumerate(normal_cases[:2]):
        paths.append(tmp_path / f"ct{i}.nii.gz")
        sitk.WriteImage(ph.image, str(paths[-1]))
    assert main(["--model-dir", str(tmp_path / "m"), "--images", *map(str, paths)]) == 0
    recorded = read_metadata(tmp_path / "m").raw["input_profile"]
    assert recorded["noise_hu"]["n"] == 2 and recorded["lung_hu_p50"]["min"] <= recorded["lung_hu_p50"]["max"]
    assert "ct0.nii.gz" in recorded["source"]
    assert json.loads((tmp_path / "m" / "metadata.json").read_text())["sha256"] != "0" * 64  # weights untouched
