"""Classifier inference: slice selection, orientation, aggregation rules, with networks whose output is known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.errors import InputError, ModelError
from CovidCTAnalysisLib.inference.classify import aggregate, classify, select_slices
from CovidCTAnalysisLib.models.folder import LoadedModel
from CovidCTAnalysisLib.models.metadata import ModelMetadata
from CovidCTAnalysisLib.models.networks import build_classifier

CLASSES = ["Normal", "Pneumonia", "COVID-19"]


@dataclass(frozen=True)
class Extent:  # the fields of lungs_threshold.LungExtent that classify reads
    z_indices: tuple
    bbox_index: tuple
    axial_axis: int = 0
    axial_indices: tuple = ()


def metadata(**pre) -> ModelMetadata:
    return ModelMetadata(raw={
        "id": "cls-test", "version": "0.0.1", "task": "classification", "sha256": "0" * 64, "demo": True,
        "architecture": {"name": "resnet50", "kwargs": {}}, "trained_on": "nothing", "eval_metrics": {},
        "intended_use": "Research use, not for diagnosis.", "labels": CLASSES,
        "preprocessing": {"windows": [[-600, 1500]], "input_size": 16, "imagenet_norm": False, **pre},
    })


class BrightnessLogits(torch.nn.Module):
    """Logits from the mean of channel 0: dark slices look Normal, bright ones COVID-19."""

    def forward(self, x):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([10 * (0.5 - m), torch.zeros_like(m), 10 * (m - 0.5)], dim=1)


def expected_slice_probs(hu_values):
    m = np.clip((np.asarray(hu_values, float) + 1350.0) / 1500.0, 0, 1)  # window (-600, 1500)
    logits = np.stack([10 * (0.5 - m), np.zeros_like(m), 10 * (m - 0.5)], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def volume_with_slice_values(values, size_xy=(24, 20), direction=None) -> sitk.Image:
    arr = np.empty((len(values), size_xy[1], size_xy[0]), np.float32)
    for k, v in enumerate(values):
        arr[k] = v
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 5.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


HU = [-1000, -950, -900, -400, -850, 0, -980, -200]


def loaded(module, **pre) -> LoadedModel:
    return LoadedModel(metadata=metadata(**pre), module=module, path=Path("."))


def test_mean_aggregation_matches_known_logits():
    img = volume_with_slice_values(HU)
    ext = Extent(z_indices=tuple(range(8)), bbox_index=(4, 2, 0, 20, 18, 8), axial_indices=tuple(range(8)))
    r = classify(img, ext, loaded(BrightnessLogits()), "cpu")
    probs = expected_slice_probs(HU)
    assert r.n_slices == 8 and r.slice_indices == tuple(range(8))
    assert np.allclose(r.slice_probabilities, probs, atol=1e-5)
    assert np.allclose([r.probabilities[c] for c in CLASSES], probs.mean(axis=0), atol=1e-5)
    assert r.label == CLASSES[int(np.argmax(probs.mean(axis=0)))] == "Normal"
    assert "cls-test" in r.summary()


def test_top_fraction_mean_uses_the_most_abnormal_slices():
    img = volume_with_slice_values(HU)
    ext = Extent(z_indices=tuple(range(8)), bbox_index=(2, 0, 0, 22, 20, 8), axial_indices=tuple(range(8)))
    model = loaded(BrightnessLogits(), aggregation={"rule": "top_fraction_mean", "fraction": 0.25})
    r = classify(img, ext, model, "cpu")
    probs = expected_slice_probs(HU)
    top2 = probs[[5, 7]]  # HU 0 and -200: the two least Normal slices
    assert np.allclose([r.probabilities[c] for c in CLASSES], top2.mean(axis=0), atol=1e-5)
    assert r.label == "COVID-19"  # mean would say Normal: the rule matters


def test_slice_step_and_lung_slices_only():
    img = volume_with_slice_values(HU + HU)
    lung = tuple(range(2, 15))
    ext = Extent(z_indices=lung, bbox_index=(2, 0, 2, 22, 20, 15), axial_indices=lung)
    r = classify(img, ext, loaded(BrightnessLogits(), slice_step=3, batch_size=2), "cpu")
    assert r.slice_indices == (2, 5, 8, 11, 14)
    assert np.allclose(r.slice_probabilities, expected_slice_probs([(HU + HU)[i] for i in r.slice_indices]), atol=1e-5)
    assert list(select_slices(np.arange(10), 4)) == [0, 4, 8]
    assert list(select_slices(np.arange(11), 4)) == [1, 5, 9]  # centred: both lung ends alike
    assert list(select_slices(np.arange(3), 4)) == [1]


class RightSideOfPicture(torch.nn.Module):
    """COVID-19 when the right half of the picture (the patient's left, radiological view) is brighter."""

    def forward(self, x):
        w = x.shape[-1]
        d = x[:, 0, :, w // 2:].mean(dim=(1, 2)) - x[:, 0, :, : w // 2].mean(dim=(1, 2))
        return torch.stack([-20 * d, torch.zeros_like(d), 20 * d], dim=1)


@pytest.mark.parametrize("flip", [False, True])
def test_slices_are_shown_in_patient_orientation(flip):
    arr = np.full((4, 20, 24), -1000.0, np.float32)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if flip:  # index x runs to the patient's right: the patient's left is at low x
        arr[:, :, :12] = 0.0
        direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    else:
        arr[:, :, 12:] = 0.0
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(direction)
    ext = Extent(z_indices=(0, 1, 2, 3), bbox_index=(0, 0, 0, 24, 20, 4), axial_indices=(0, 1, 2, 3))
    assert classify(img, ext, loaded(RightSideOfPicture()), "cpu").label == "COVID-19"


def test_resnet50_runs_and_probabilities_sum_to_one():
    torch.manual_seed(0)
    img = volume_with_slice_values(HU[:4])
    ext = Extent(z_indices=(0, 1, 2, 3), bbox_index=(0, 0, 0, 24, 20, 4), axial_indices=(0, 1, 2, 3))
    module = build_classifier().eval()
    r = classify(img, ext, loaded(module, windows=[[-600, 1500], [40, 400], [-500, 700]], input_size=32), "cpu")
    assert r.slice_probabilities.shape == (4, 3)
    assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert r.label in CLASSES


def test_aggregate_refusals():
    probs = expected_slice_probs(HU)
    with pytest.raises(ModelError, match="unknown"):
        aggregate(probs, CLASSES, {"rule": "median"})
    with pytest.raises(ModelError, match="Normal"):
        aggregate(probs, ["A", "B", "C"], {"rule": "top_fraction_mean", "fraction": 0.5})
    assert np.allclose(aggregate(probs, CLASSES, {"rule": "top_fraction_mean", "fraction": 1.0}), probs.mean(axis=0))


def test_no_lung_slices_and_wrong_task_refused():
    img = volume_with_slice_values(HU)
    with pytest.raises(InputError, match="no lung slices"):
        classify(img, Extent(z_indices=(), bbox_index=(2, 0, 0, 22, 20, 8)), loaded(BrightnessLogits()), "cpu")
    seg = LoadedModel(metadata=ModelMetadata(raw={**metadata().raw, "task": "segmentation"}),
                      module=BrightnessLogits(), path=Path("."))
    ext = Extent(z_indices=(0,), bbox_index=(2, 0, 0, 22, 20, 8), axial_indices=(0,))
    with pytest.raises(ModelError, match="segmentation model"):
        classify(img, ext, seg, "cpu")


@pytest.mark.parametrize("fraction, n, k", [(0.25, 7, 2), (0.3, 10, 3), (0.1, 9, 1), (0.01, 5, 1), (0.5, 5, 3)])
def test_top_fraction_takes_the_fraction_rounded_up(fraction, n, k):
    # 0.25 of 7 slices is 1.75: the rule averages the top 2 (rounding up), never 1 (rounding down)
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(3), size=n)
    ranked = probs[np.argsort(-(1.0 - probs[:, 0]), kind="stable")]
    got = aggregate(probs, CLASSES, {"rule": "top_fraction_mean", "fraction": fraction})
    assert np.allclose(got, ranked[:k].mean(axis=0))
    assert not np.allclose(got, ranked[:k - 1].mean(axis=0) if k > 1 else ranked[:2].mean(axis=0))
