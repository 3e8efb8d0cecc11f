"""Preprocessing shared with training: classifier inputs, orientation, segmenter resampling and transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.models.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classifier_inputs,
    classifier_inputs_from_gray,
    classifier_train_transforms,
    get_segmenter_transforms,
    orient_array_lps,
    segmenter_preprocess,
    validate_preprocessing,
)

WINDOWS = [[-600, 1500], [40, 400], [-500, 700]]
RAW = {"windows": WINDOWS, "input_size": 32, "imagenet_norm": False}


def test_hu_windows_one_channel_per_window():
    hu = np.full((5, 20, 30), -600.0, dtype=np.float32)
    x = classifier_inputs(hu, RAW)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    # keep_aspect pads the 20x30 crop to 30x30 with zeros (air) above and below, then resizes
    centre = x[:, :, 16, 16]
    expected = [(-600 - (lv - w / 2)) / w for lv, w in WINDOWS]
    expected = np.clip(expected, 0, 1)
    assert np.allclose(centre.numpy(), expected, atol=1e-5)
    assert float(x[:, :, 0, 16].abs().max()) < 1e-6  # padding row
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_stretch_when_keep_aspect_is_off():
    hu = np.full((1, 20, 30), 1000.0, dtype=np.float32)
    x = classifier_inputs(hu, {**RAW, "keep_aspect": False})
    assert float(x.min()) == pytest.approx(1.0)


def test_gray_png_mode_is_8bit_gray_in_three_equal_channels():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 400, (3, 40, 40)).astype(np.float32)
    x = classifier_inputs(hu, {**RAW, "mode": "gray_png"})
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    levels = x * 255.0
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    gray = np.round(np.clip((hu[:, :32, :32] + 1350) / 1500, 0, 1) * 255).astype(np.uint8)
    y = classifier_inputs_from_gray(gray, {**RAW, "mode": "gray_png"})
    assert y.shape == (3, 3, 32, 32)


def test_imagenet_normalisation():
    hu = np.full((2, 32, 32), -600.0, dtype=np.float32)
    x = classifier_inputs(hu, {**RAW, "imagenet_norm": True})
    raw = classifier_inputs(hu, RAW)
    for c in range(3):
        assert torch.allclose(x[:, c], (raw[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-5)


def test_train_transforms_keep_shape_and_normalise():
    hu = np.random.default_rng(1).uniform(-1000, 200, (4, 48, 40)).astype(np.float32)
    x = classifier_inputs(hu, {**RAW, "imagenet_norm": True}, normalize=False)
    tf = classifier_train_transforms({**RAW, "imagenet_norm": True})
    torch.manual_seed(0)
    y = tf(x[0])
    assert y.shape == (3, 32, 32) and torch.isfinite(y).all()
    assert float(y.min()) < 0  # normalised (raw inputs are >= 0)
    identity = classifier_train_transforms(RAW, strength=0.0)
    assert torch.equal(identity(x[0]), x[0])


@pytest.mark.parametrize("bad", [{"mode": "rgb"}, {"windows": [[0, 100], [0, 100]]}, {"input_size": 0},
                                 {"aggregation": {"rule": "max"}},
                                 {"aggregation": {"rule": "top_fraction_mean", "fraction": 1.5}}])
def test_bad_classifier_preprocessing_refused(bad):
    with pytest.raises(ModelError):
        validate_preprocessing("classification", {**RAW, **bad})


def test_bad_segmenter_preprocessing_refused():
    with pytest.raises(ModelError, match="roi_size"):
        validate_preprocessing("segmentation", {"spacing_mm": [2, 2, 3]})
    with pytest.raises(ModelError, match="hu_range"):
        validate_preprocessing("segmentation", {"spacing_mm": [2, 2, 3], "roi_size": [8, 8, 8], "hu_range": [5, 5]})


DIRECTIONS = [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-stored
    (0, 0, 1, 1, 0, 0, 0, -1, 0),  # permuted and flipped (sagittal-like storage)
]


def _image(direction, size=(12, 10, 8), spacing=(1.0, 2.0, 3.0), origin=(5.0, -7.0, 11.0)):
    arr = np.arange(np.prod(size), dtype=np.float32).reshape(size[::-1])
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetDirection([float(v) for v in direction])
    img.SetOrigin(origin)
    return img, arr


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_orient_array_lps_runs_along_patient_axes(direction):
    img, arr = _image(direction)
    out = orient_array_lps(arr, img)

    def physical(value):
        k, j, i = np.argwhere(arr == value)[0]
        return np.array(img.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))

    p0 = physical(out[0, 0, 0])
    assert physical(out[0, 0, 1])[0] > p0[0]  # columns go to the patient's left (+x)
    assert physical(out[0, 1, 0])[1] > p0[1]  # rows go posterior (+y)
    assert physical(out[1, 0, 0])[2] > p0[2]  # slices go superior (+z)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_segmenter_preprocess_keeps_anatomy_in_place(direction):
    size, spacing = (40, 36, 20), (1.2, 1.5, 3.0)
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetDirection([float(v) for v in direction])
    img.SetOrigin((10.0, -20.0, 30.0))
    img += -1000.0
    centre_idx = (25, 12, 9)
    centre = np.array(img.TransformIndexToPhysicalPoint(centre_idx))
    arr = sitk.GetArrayFromImage(img)
    label_arr = np.zeros(arr.shape, np.uint8)
    for idx in np.ndindex(arr.shape):
        p = np.array(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1])))
        if np.linalg.norm(p - centre) < 9.0:
            arr[idx] = 0.0
            label_arr[idx] = 3
    img2 = sitk.GetImageFromArray(arr)
    img2.CopyInformation(img)
    lab = sitk.GetImageFromArray(label_arr)
    lab.CopyInformation(img)
    pre = {"spacing_mm": [2.0, 2.0, 2.5], "roi_size": [16, 16, 16], "hu_range": [-1024, 400]}
    out = segmenter_preprocess(img2, pre, lab)
    assert out.grid.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert out.grid.GetSpacing() == (2.0, 2.0, 2.5)
    assert out.image.shape == out.grid.GetSize()[::-1] == out.label.shape
    assert out.image.dtype == np.float32 and 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert set(np.unique(out.label)) == {0, 3}
    # the ball sits at the same physical place on the model grid (within a voxel)
    zyx = np.argwhere(out.label == 3).mean(axis=0)
    found = np.array(out.grid.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1])))
    assert np.linalg.norm(found - centre) < 2.5
    bright = np.argwhere(out.image > 0.5).mean(axis=0)
    assert np.allclose(bright, zyx, atol=1.0)


def test_segmenter_train_transforms_sample_roi_patches():
    rng = np.random.default_rng(0)
    image = rng.random((1, 20, 40, 44)).astype(np.float32)
    label = np.zeros((1, 20, 40, 44), np.uint8)
    label[0, 5:15, 5:30, 2:20] = 2
    label[0, 5:15, 5:30, 24:42] = 1
    pre = {"spacing_mm": [2, 2, 3], "roi_size": [24, 16, 16]}
    tf = get_segmenter_transforms("train", pre, num_samples=3)
    tf.set_random_state(0)
    out = tf({"image": image, "label": label})
    assert isinstance(out, list) and len(out) == 3
    for d in out:
        assert tuple(d["image"].shape) == (1, 16, 16, 24) and tuple(d["label"].shape) == (1, 16, 16, 24)
        assert set(torch.unique(d["label"]).tolist()) <= {0, 1, 2}
    val = get_segmenter_transforms("val", pre)({"image": image, "label": label})
    assert tuple(val["image"].shape) == image.shape


def test_left_right_flip_swaps_lung_labels():
    from CovidCTAnalysisLib.models.transforms import RandFlipLeftRightd

    image = np.tile(np.arange(10, dtype=np.float32), (1, 2, 3, 1))  # increases along x
    label = np.zeros((1, 2, 3, 10), np.uint8)
    label[..., :4] = 2  # patient's right at low x
    label[..., 6:] = 1
    label[..., 5] = 3
    out = RandFlipLeftRightd(keys=["image", "label"], prob=1.0)({"image": image, "label": label})
    assert torch.equal(out["image"][0, 0, 0], torch.arange(9, -1, -1, dtype=torch.float32))
    lab = out["label"][0, 0, 0].tolist()
    # mirrored: the lung now on the high-x side was the right lung, so it must be relabelled 1
    assert lab == [2, 2, 2, 2, 3, 0, 1, 1, 1, 1]
