"""Segmenter inference: geometry of the output, mapping back to the input grid, lung box handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.errors import InputError, ModelError
from CovidCTAnalysisLib.inference.segment import lung_box_with_margin, probabilities_to_labels, segment
from CovidCTAnalysisLib.models.folder import LoadedModel
from CovidCTAnalysisLib.models.metadata import ModelMetadata
from CovidCTAnalysisLib.models.networks import build_segmenter
from CovidCTAnalysisLib.models.transforms import segmenter_settings
from CovidCTAnalysisLib.progress import Progress

LABELS = {"0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"}
DIRECTIONS = [
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # permuted and flipped
]


def meta(labels=LABELS, **pre) -> ModelMetadata:
    return ModelMetadata(raw={
        "id": "seg-test", "version": "0.0.1", "task": "segmentation", "sha256": "0" * 64, "demo": True,
        "architecture": {"name": "monai.UNet", "kwargs": {}}, "trained_on": "nothing", "eval_metrics": {},
        "intended_use": "Research use, not for diagnosis.", "labels": labels,
        "preprocessing": {"spacing_mm": [3.0, 3.0, 4.0], "roi_size": [16, 16, 16], "margin_mm": 6.0, **pre},
    })


def ct(direction, size=(48, 40, 24), spacing=(1.4, 1.1, 3.0)):
    """Soft tissue with two lung ellipsoids; returns the image and the truth (physical left/right)."""
    img = sitk.Image(size, sitk.sitkInt16)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin((-30.0, 20.0, -15.0))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    d = np.array(direction).reshape(3, 3)
    phys = np.array(img.GetOrigin()) + (idx * np.array(spacing)) @ d.T
    centre = phys.mean(axis=0)
    rel = phys - centre
    span = phys.max(axis=0) - phys.min(axis=0)
    truth = np.zeros(len(idx), np.uint8)
    for sign, value in ((1, 1), (-1, 2)):  # LPS +x is the patient's left: label 1
        r = ((rel[:, 0] - sign * span[0] / 4) / (span[0] / 5)) ** 2 + (rel[:, 1] / (span[1] / 3)) ** 2 \
            + (rel[:, 2] / (span[2] / 3)) ** 2
        truth[r <= 1] = value
    truth_xyz = truth.reshape(size)
    arr = np.where(truth_xyz > 0, -850, 40).astype(np.int16).transpose(2, 1, 0)  # (z, y, x)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.CopyInformation(img)
    return out, np.ascontiguousarray(truth_xyz.transpose(2, 1, 0))


class LungByIntensityAndSide(torch.nn.Module):
    """'Segments' scaled-HU lung (< 0.3) and calls it left (1) on the high-x half of each window,
    right (2) on the low-x half: deliberately wrong sides in most windows, fixed by post-processing."""

    def forward(self, x):
        lung = (x < 0.3).float()
        half = torch.zeros_like(lung)
        half[..., x.shape[-1] // 2:] = 1.0
        return 10 * torch.cat([1 - lung, lung * half, lung * (1 - half), torch.zeros_like(lung)], dim=1)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_untrained_unet_gives_labels_on_the_input_grid(direction):
    img, _ = ct(direction)
    torch.manual_seed(0)
    net = build_segmenter(4, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    model = LoadedModel(metadata=meta(), module=net, path=Path("."))
    box = (6, 5, 3, 40, 35, 20)
    out = segment(img, box, model, "cpu")
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == img.GetSpacing()
    assert out.GetOrigin() == img.GetOrigin() and out.GetDirection() == img.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(out)
    assert set(np.unique(arr).tolist()) <= {0, 1, 2, 3}
    x0, y0, z0, x1, y1, z1 = lung_box_with_margin(img, box, 6.0)
    outside = np.ones(arr.shape, bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert not arr[outside].any()  # nothing outside the lung box plus margin


class LungsOnTheWrongSides(torch.nn.Module):
    """'Segments' scaled-HU lung (< 0.3) and calls the lung at low model-grid x 'left' (1): on the LPS model
    grid low x is the patient's right, so every lung voxel gets the wrong side, consistently."""

    def forward(self, x):
        lung = (x < 0.3).float()
        profile = lung.sum(dim=(0, 1, 2, 3))
        middle = float((torch.arange(len(profile)) * profile).sum() / profile.sum())
        low_x = (torch.arange(x.shape[-1]) < middle).float().expand_as(lung)
        return 10 * torch.cat([1 - lung, lung * low_x, lung * (1 - low_x), torch.zeros_like(lung)], dim=1)


class Notes(Progress):
    def __init__(self):
        self.lines = []

    def log(self, message: str, level: str = "info") -> None:
        self.lines.append(message)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_labels_land_on_the_lungs_and_sides_follow_the_patient(direction):
    img, truth = ct(direction)
    # one window covers the whole model grid, so the network's (wrong) sides are consistent
    model = LoadedModel(metadata=meta(roi_size=[32, 32, 32]), module=LungsOnTheWrongSides(), path=Path("."))
    notes, kept = Notes(), []
    out = sitk.GetArrayFromImage(segment(img, None, model, "cpu", notes, notes=kept))
    lung_truth, lung_found = truth > 0, np.isin(out, (1, 2))
    dice = 2 * (lung_truth & lung_found).sum() / (lung_truth.sum() + lung_found.sum())
    assert dice > 0.9
    assert any("left/right lung labels were reversed" in n for n in notes.lines), notes.lines  # the swap ran
    assert [f"segmentation post-processing: {n}" for n in kept] == notes.lines  # report.json gets what was logged
    # after the swap label 1 is on the patient's left: every found lung voxel on its true side
    both = lung_truth & lung_found
    assert (out[both] == truth[both]).mean() > 0.995


def test_probabilities_map_back_by_physical_position():
    grid = sitk.Image((4, 4, 2), sitk.sitkUInt8)
    grid.SetSpacing((4.0, 4.0, 4.0))
    target = sitk.Image((16, 16, 8), sitk.sitkUInt8)
    target.SetSpacing((1.0, 1.0, 1.0))
    target.SetOrigin((-1.5, -1.5, -1.5))
    target.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # x runs the other way
    probs = np.zeros((4, 2, 4, 4), np.float32)
    probs[0] = 1.0
    probs[:, :, :, 2:] = 0.0
    probs[3, :, :, 2:] = 1.0  # lesion at physical x >= 8 mm
    labels = probabilities_to_labels(probs, grid, target, {0: 0, 1: 1, 2: 2, 3: 3})
    assert labels.shape == (8, 16, 16)
    # target x index i sits at physical x = -1.5 - i: all negative, i.e. outside/left of the lesion
    assert not (labels == 3).any()
    target.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    labels = probabilities_to_labels(probs, grid, target, {0: 0, 1: 1, 2: 2, 3: 3})
    xs = np.nonzero((labels == 3).any(axis=(0, 1)))[0]
    assert xs.min() in (8, 9, 10) and xs.max() == 15


def test_lesion_only_model_keeps_lesions_without_lungs():
    img, _ = ct(DIRECTIONS[0])

    class LesionWhereLung(torch.nn.Module):
        def forward(self, x):
            lung = (x < 0.3).float()
            return 10 * torch.cat([1 - lung, lung], dim=1)

    model = LoadedModel(metadata=meta(labels={"0": "background", "1": "Lesion"}), module=LesionWhereLung(),
                        path=Path("."))
    out = sitk.GetArrayFromImage(segment(img, None, model, "cpu"))
    assert set(np.unique(out).tolist()) == {0, 3}


def test_refusals():
    img, _ = ct(DIRECTIONS[0])
    net = LungByIntensityAndSide()
    with pytest.raises(ModelError, match="classification model"):
        segment(img, None, LoadedModel(metadata=ModelMetadata({**meta().raw, "task": "classification"}), module=net,
                                       path=Path(".")), "cpu")
    with pytest.raises(ModelError, match="label name"):
        segment(img, None, LoadedModel(metadata=meta(labels={"0": "background", "1": "liver"}), module=net,
                                       path=Path(".")), "cpu")
    with pytest.raises(InputError, match="lung box"):
        segment(img, (10, 10, 10, 5, 30, 20), LoadedModel(metadata=meta(), module=net, path=Path(".")), "cpu")


@pytest.mark.parametrize("channels", [4, 2])  # 2: the interactive model's path (the sign of the difference)
@pytest.mark.parametrize("direction", DIRECTIONS + [(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)])
def test_fast_map_back_agrees_with_sitk_resampling(direction, channels):
    from CovidCTAnalysisLib.inference.segment import _resampled_argmax, _separable_argmax
    from CovidCTAnalysisLib.models.transforms import model_grid

    target = sitk.Image((30, 26, 12), sitk.sitkUInt8)
    target.SetSpacing((0.9, 1.1, 2.5))
    target.SetDirection(direction)
    target.SetOrigin((3.0, -4.0, 7.0))
    grid = model_grid(target, (3.0, 3.0, 4.0))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(channels, *grid.GetSize()[::-1])).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    fast = _separable_argmax(probs, grid, target)
    slow = _resampled_argmax(probs, grid, target, {c: c for c in range(channels)})
    assert len(np.unique(slow)) == channels  # every channel wins somewhere: a swapped sign would show
    assert np.array_equal(fast[2:-2, 2:-2, 2:-2], slow[2:-2, 2:-2, 2:-2])
    assert (fast == slow).mean() > 0.95  # they may differ at the outermost half voxel (clamp vs. border)


class LesionAboveHalfway(torch.nn.Module):
    """Lung below -300 HU; lesion where the scaled HU is above -500 HU: inside the true (half-way, -650 HU)
    outline of a blended ground-glass ball, as a coarse network draws it."""

    def forward(self, x):
        hu = x * 1424.0 - 1024.0  # hu_range [-1024, 400]
        lung = (hu < -300.0).float()
        lesion = lung * (hu > -500.0).float()
        return 10 * torch.cat([1 - lung, lung - lesion, torch.zeros_like(lung), lesion], dim=1)


def _ground_glass_ball():
    zz, yy, xx = np.indices((24, 48, 64), dtype=float)
    rho = np.sqrt(((zz - 12) * 2.0) ** 2 + (yy - 24) ** 2 + (xx - 40) ** 2)  # spacing (z, y, x) = (2, 1, 1) mm
    lung = (np.abs(yy - 24) < 20) & (xx > 8) & (xx < 60)
    weight = np.clip((14.0 - rho) / 4.0, 0.0, 1.0)  # -850 HU lung blending into a -450 HU ball of radius 12 mm
    hu = np.where(lung, -850.0 + 400.0 * weight, 40.0).astype(np.int16)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


@pytest.mark.parametrize("edges", [True, False])
def test_lesion_edges_follow_the_models_setting(edges):
    # Catches: the switch ignored (edges moved anyway, or never), or no word in the notes of which happened.
    img = _ground_glass_ball()
    model = LoadedModel(metadata=meta(roi_size=[32, 32, 32], hu_range=[-1024, 400], spacing_mm=[1.0, 1.0, 2.0],
                                      lesion_edges=edges), module=LesionAboveHalfway(), path=Path("."))
    kept = []
    out = sitk.GetArrayFromImage(segment(img, None, model, "cpu", notes=kept))
    hu = sitk.GetArrayViewFromImage(img)
    drawn = int(((hu > -500) & (hu < -300)).sum())  # the model's own outline
    lesion = int((out == 3).sum())
    if edges:
        assert lesion > 1.3 * drawn and any("lesion edges moved" in n for n in kept), kept
    else:
        assert lesion == drawn and any("lesion edges left as model seg-test drew them" in n for n in kept), kept


def test_lesion_edges_setting_must_be_true_or_false():
    with pytest.raises(ModelError, match="lesion_edges='no'; expected true or false"):
        segmenter_settings({"spacing_mm": [1, 1, 1], "roi_size": [8, 8, 8], "lesion_edges": "no"})
