"""Preprocessing shared by training and inference, driven by ``metadata.json``.

Training imports these functions, so a model sees at inference exactly what it
saw in training. The ``preprocessing`` dict of a model's metadata drives them.

Classifier keys (defaults in ``CLASSIFIER_DEFAULTS``):
    ``mode``          ``"hu_windows"``: each ``(level, width)`` window becomes one channel scaled
                      to 0..1 (1 window is replicated to 3 channels, otherwise exactly 3);
                      ``"gray_png"``: the first window only, quantised to 256 grey levels and
                      replicated to 3 channels, as 2-D PNG datasets (e.g. Kaggle) look.
    ``windows``       ``[[level, width], ...]`` in HU
    ``input_size``    side S of the square network input
    ``keep_aspect``   pad the lung crop to a square (air) before resizing, instead of stretching
    ``imagenet_norm`` subtract ImageNet mean / divide by std after scaling to 0..1
    ``slice_step``    classify every k-th lung slice; ``batch_size`` slices per forward pass
    ``aggregation``   ``{"rule": "mean"}`` or ``{"rule": "top_fraction_mean", "fraction": f}``
                      (see ``classify.aggregate``)
Segmenter keys (``SEGMENTER_DEFAULTS``):
    ``spacing_mm`` [x, y, z], ``hu_range`` [lo, hi], ``roi_size`` [x, y, z] (voxels at
    ``spacing_mm``), ``sw_overlap``, ``sw_batch_size``, ``margin_mm`` (around the lung box),
    ``antialias`` (Gaussian smoothing before downsampling), ``lesion_edges`` (move the predicted lesion
    outlines onto the image's half-way HU, ``inference.lesion_edges``; true by default, which suits models
    trained on phantoms and synthetic lesions, whose truth follows that rule; a model trained on radiologists'
    outlines can record false and keep its own edges).

Segmenter arrays are resampled onto an axis-aligned LPS grid (identity direction),
so the network always sees the patient the same way round whatever the scanner's
direction matrix: array (z, y, x) = (inferior→superior, anterior→posterior,
patient's right→left). Tensors are (C, z, y, x); ``roi_size`` is given (x, y, z) like
spacing and reversed here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from CovidCTAnalysisLib.constants import DEFAULT_CLASSIFIER_WINDOWS, DEFAULT_SEGMENTER_HU_RANGE
from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.geometry import aligned_grid, patient_axes
from CovidCTAnalysisLib.masks import swap_left_right

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_MODES = ("hu_windows", "gray_png")
AGGREGATION_RULES = ("mean", "top_fraction_mean")

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "mode": "hu_windows",
    "windows": [list(w) for w in DEFAULT_CLASSIFIER_WINDOWS],
    "input_size": 224,
    "keep_aspect": True,
    "imagenet_norm": True,
    "slice_step": 1,
    "batch_size": 16,
    "aggregation": {"rule": "mean"},
}
SEGMENTER_DEFAULTS: dict[str, Any] = {
    "hu_range": list(DEFAULT_SEGMENTER_HU_RANGE),
    "sw_overlap": 0.25,
    "sw_batch_size": 1,
    "margin_mm": 10.0,
    "antialias": False,
    "lesion_edges": True,
}
SEGMENTER_REQUIRED = ("spacing_mm", "roi_size")


# --- validation -------------------------------------------------------------------------------------------------
def classifier_settings(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """Metadata ``preprocessing`` merged over the defaults, checked."""
    p = {**CLASSIFIER_DEFAULTS, **(preprocessing or {})}
    if p["mode"] not in CLASSIFIER_MODES:
        raise ModelError(f"preprocessing.mode={p['mode']!r}; expected one of {CLASSIFIER_MODES}")
    wins = p["windows"]
    if not isinstance(wins, (list, tuple)) or not wins or any(len(w) != 2 or float(w[1]) <= 0 for w in wins):
        raise ModelError(f"preprocessing.windows={wins!r}; expected a list of [level, width] with width > 0")
    if p["mode"] == "hu_windows" and len(wins) not in (1, 3):
        raise ModelError(f"preprocessing.windows has {len(wins)} windows; mode hu_windows needs 1 or 3")
    for key in ("input_size", "slice_step", "batch_size"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise ModelError(f"preprocessing.{key}={p[key]!r}; expected a positive integer")
    agg = p["aggregation"]
    if not isinstance(agg, dict) or agg.get("rule") not in AGGREGATION_RULES:
        raise ModelError(f"preprocessing.aggregation={agg!r}; expected {{'rule': one of {AGGREGATION_RULES}, ...}}")
    if agg["rule"] == "top_fraction_mean" and not (0.0 < float(agg.get("fraction", -1)) <= 1.0):
        raise ModelError(f"aggregation top_fraction_mean needs 0 < fraction <= 1, got {agg.get('fraction')!r}")
    return p


def segmenter_settings(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """Metadata ``preprocessing`` merged over the defaults, checked."""
    missing = [k for k in SEGMENTER_REQUIRED if k not in (preprocessing or {})]
    if missing:
        raise ModelError(f"segmentation preprocessing lacks {missing}; expected {list(SEGMENTER_REQUIRED)} "
                         "(spacing_mm [x,y,z] and roi_size [x,y,z])")
    p = {**SEGMENTER_DEFAULTS, **preprocessing}
    for key in ("spacing_mm", "roi_size"):
        v = p[key]
        if not isinstance(v, (list, tuple)) or len(v) != 3 or any(float(s) <= 0 for s in v):
            raise ModelError(f"preprocessing.{key}={v!r}; expected 3 positive numbers [x, y, z]")
    lo, hi = (float(v) for v in p["hu_range"])
    if not hi > lo:
        raise ModelError(f"preprocessing.hu_range={p['hu_range']!r}; expected [lo, hi] with hi > lo")
    if not 0.0 <= float(p["sw_overlap"]) < 1.0:
        raise ModelError(f"preprocessing.sw_overlap={p['sw_overlap']!r}; expected 0 <= overlap < 1")
    if not isinstance(p["lesion_edges"], bool):
        raise ModelError(f"preprocessing.lesion_edges={p['lesion_edges']!r}; expected true or false")
    return p


def validate_preprocessing(task: str, preprocessing: dict[str, Any]) -> None:
    """Raise ``ModelError`` if a model's preprocessing cannot be run by this core."""
    (classifier_settings if task == "classification" else segmenter_settings)(preprocessing)


# --- orientation ------------------------------------------------------------------------------------------------
def lps_orientation(image: sitk.Image) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How to turn a (z, y, x) array of ``image`` into (S, P, L) order: (transpose axes, flips).

    Each image axis is assigned the LPS axis it runs along (``geometry.patient_axes``; oblique images
    are treated as their nearest axis-aligned orientation, as radiology viewers do).
    """
    axes = patient_axes(image)
    # numpy axis of image axis j is 2 - j; output numpy axis of LPS axis k is 2 - k.
    transpose = [0, 0, 0]
    flips = [False, False, False]
    for j, k in enumerate(axes.lps_of_index):
        transpose[2 - k] = 2 - j
        flips[2 - k] = axes.sign[j] < 0
    return tuple(transpose), tuple(flips)  # type: ignore[return-value]


def orient_array_lps(array: np.ndarray, image: sitk.Image) -> np.ndarray:
    """View of a (z, y, x) array of ``image`` (or a box of it) with axes (S←I, A→P, R→L)."""
    transpose, flips = lps_orientation(image)
    out = np.transpose(array, transpose)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    return out


# --- classifier -------------------------------------------------------------------------------------------------
def window_to_unit(hu: np.ndarray | torch.Tensor, level: float, width: float) -> torch.Tensor:
    """HU → [0, 1] through a (level, width) window, as float32 tensor."""
    t = torch.as_tensor(np.asarray(hu, dtype=np.float32) if not torch.is_tensor(hu) else hu, dtype=torch.float32)
    return ((t - (level - width / 2.0)) / width).clamp_(0.0, 1.0)


def _resize_square(x: torch.Tensor, size: int, keep_aspect: bool) -> torch.Tensor:
    """(N, C, H, W) in 0..1 → (N, C, S, S); pads with 0 (the window's floor, i.e. air) to keep aspect."""
    n, c, h, w = x.shape
    if keep_aspect and h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        x = torch.nn.functional.pad(x, (left, side - w - left, top, side - h - top), value=0.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
    return x.clamp_(0.0, 1.0)


def classifier_normalize(x: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    """ImageNet mean/std normalisation of (…, 3, S, S) tensors in 0..1 when the metadata asks for it."""
    from torchvision.transforms.v2 import functional as tvf

    if not classifier_settings(preprocessing)["imagenet_norm"]:
        return x
    return tvf.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def classifier_inputs(hu_slices: np.ndarray, preprocessing: dict[str, Any], normalize: bool = True) -> torch.Tensor:
    """(N, H, W) HU slices (cropped to the lungs, rows anterior→posterior, columns patient's right→left)
    → (N, 3, S, S) float32 network input, as described in the module docstring.

    ``normalize=False`` returns the 0..1 tensor before ImageNet normalisation, for
    training augmentation (``classifier_train_transforms`` normalises at its end).
    """
    p = classifier_settings(preprocessing)
    hu = np.asarray(hu_slices)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu_slices has shape {hu.shape}; expected (N, H, W) with N, H, W >= 1")
    if p["mode"] == "gray_png":
        level, width = p["windows"][0]
        gray = torch.round(window_to_unit(hu, float(level), float(width)) * 255.0) / 255.0
        x = gray.unsqueeze(1).expand(-1, 3, -1, -1)
    else:
        chans = [window_to_unit(hu, float(lv), float(wd)) for lv, wd in p["windows"]]
        x = torch.stack(chans * (3 if len(chans) == 1 else 1), dim=1)
    x = _resize_square(x.contiguous(), p["input_size"], p["keep_aspect"])
    if p["mode"] == "gray_png":
        x = torch.round(x * 255.0) / 255.0  # PNG data are 8-bit after resizing too
    return classifier_normalize(x, p) if normalize else x


def classifier_inputs_from_gray(gray: np.ndarray, preprocessing: dict[str, Any], normalize: bool = True) -> torch.Tensor:
    """(N, H, W) 8-bit grey images (PNG datasets) → (N, 3, S, S), the ``gray_png`` path without HU."""
    p = classifier_settings(preprocessing)
    g = torch.as_tensor(np.asarray(gray, dtype=np.float32) / 255.0).clamp_(0.0, 1.0)
    if g.ndim != 3:
        raise ValueError(f"gray has shape {tuple(g.shape)}; expected (N, H, W)")
    x = _resize_square(g.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), p["input_size"], p["keep_aspect"])
    return classifier_normalize(x, p) if normalize else x


class _ClampUnit(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


def classifier_train_transforms(preprocessing: dict[str, Any], strength: float = 1.0):
    """Training-only augmentation of (3, S, S) or (N, 3, S, S) tensors in 0..1 from
    ``classifier_inputs(..., normalize=False)``: random resized crop (scaling and
    cropping), horizontal flip, rotation/translation/scale/shear (affine), brightness
    and contrast; ends with the same normalisation as inference.
    ``strength`` scales the ranges (0 = normalisation only).
    """
    from torchvision.transforms import v2

    p = classifier_settings(preprocessing)
    s = float(strength)
    ops: list[torch.nn.Module] = []
    if s > 0:
        ops += [
            v2.RandomResizedCrop(p["input_size"], scale=(1.0 - 0.25 * s, 1.0), ratio=(1 - 0.1 * s, 1 + 0.1 * s),
                                 antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomAffine(degrees=10 * s, translate=(0.05 * s, 0.05 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s),
                            shear=5 * s),
            v2.ColorJitter(brightness=0.1 * s, contrast=0.15 * s),
            _ClampUnit(),
        ]
    if p["imagenet_norm"]:  # as classifier_normalize at inference
        ops.append(v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)))
    return v2.Compose(ops) if ops else v2.Identity()


# --- segmenter --------------------------------------------------------------------------------------------------
class SegmenterInput(NamedTuple):
    """What ``segmenter_preprocess`` returns.

    ``image``: (z, y, x) float32 in 0..1 on the model grid; ``label``: (z, y, x) uint8 on the
    same grid or None; ``grid``: the model grid as an sitk image (holds ``image``), identity
    direction, ``spacing_mm`` spacing, used to map predictions back.
    """

    image: np.ndarray
    label: np.ndarray | None
    grid: sitk.Image


def model_grid(image: sitk.Image, spacing_mm) -> sitk.Image:
    """An empty axis-aligned LPS grid at ``spacing_mm`` that covers ``image`` (``geometry.aligned_grid``)."""
    return aligned_grid(image, spacing_mm).reference()


def scale_hu(hu: np.ndarray, hu_range) -> np.ndarray:
    """Clip HU to ``hu_range`` and scale it to 0..1 (float32)."""
    lo, hi = (float(v) for v in hu_range)
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def segmenter_preprocess(image: sitk.Image, preprocessing: dict[str, Any],
                         label: sitk.Image | None = None) -> SegmenterInput:
    """Resample ``image`` (HU; a lung-box crop at inference) onto the model grid with linear
    interpolation, clip + scale ``hu_range`` to 0..1; resample ``label`` (same geometry as
    ``image``) with nearest neighbour. Outside the image counts as air.
    """
    p = segmenter_settings(preprocessing)
    lo, hi = (float(v) for v in p["hu_range"])
    grid = model_grid(image, p["spacing_mm"])
    src = sitk.Cast(image, sitk.sitkFloat32)
    if p["antialias"]:
        # Gaussian with sigma from the spacing ratio suppresses aliasing of noise when downsampling.
        sig = [0.5 * math.sqrt(max(t * t - s * s, 0.0)) for t, s in zip(p["spacing_mm"], image.GetSpacing(), strict=True)]
        if any(v > 0 for v in sig):
            src = sitk.SmoothingRecursiveGaussian(src, [max(v, 1e-3) for v in sig])
    res = sitk.Resample(src, grid, sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)
    del src
    arr = scale_hu(sitk.GetArrayViewFromImage(res), (lo, hi))
    scaled = sitk.GetImageFromArray(arr)
    scaled.CopyInformation(grid)
    lab = None
    if label is not None:
        if label.GetSize() != image.GetSize():
            raise ValueError(f"label size {label.GetSize()} differs from image size {image.GetSize()}")
        lab_img = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        lab = sitk.GetArrayFromImage(lab_img)
    return SegmenterInput(image=arr, label=lab, grid=scaled)


def roi_size_zyx(preprocessing: dict[str, Any]) -> tuple[int, int, int]:
    """``roi_size`` [x, y, z] from the metadata as the (z, y, x) window of the tensors."""
    x, y, z = (int(v) for v in segmenter_settings(preprocessing)["roi_size"])
    return (z, y, x)


def get_segmenter_transforms(mode: str, preprocessing: dict[str, Any], num_samples: int = 2, pos: float = 1.0,
                             neg: float = 1.0, lr_flip_prob: float = 0.5):
    """MONAI dictionary transforms for ``"train"``, ``"val"`` or ``"infer"``.

    Input dicts hold ``"image"`` (1, z, y, x) float 0..1 and, except for infer,
    ``"label"`` (1, z, y, x) from ``segmenter_preprocess``. ``train`` pads to the ROI,
    samples ``num_samples`` ROI patches with ``RandCropByPosNegLabeld`` (``pos``:``neg``
    foreground:background centres), mirrors left-right *and swaps labels 1/2* (labels stay
    "by position", see ``RandFlipLeftRightd``), and perturbs intensity (scale, shift, noise).
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    roi = roi_size_zyx(preprocessing)
    if mode == "infer":
        return Compose([EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False)])
    keys = ["image", "label"]
    first = [EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
             EnsureTyped(keys=["label"], dtype=torch.uint8, track_meta=False)]
    if mode == "val":
        return Compose(first)
    if mode != "train":
        raise ValueError(f"mode={mode!r}; expected 'train', 'val' or 'infer'")
    return Compose(first + [
        SpatialPadd(keys=keys, spatial_size=roi, mode="constant"),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi, pos=pos, neg=neg,
                               num_samples=num_samples, image_key="image", image_threshold=0.0),
        __getattr__("RandFlipLeftRightd")(keys=keys, label_key="label", prob=lr_flip_prob),
        RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
        RandShiftIntensityd(keys=["image"], offsets=0.05, prob=0.5),
        RandGaussianNoised(keys=["image"], prob=0.2, std=0.01),
    ])


# Hand-written: MONAI's RandFlipd mirrors images and labels alike, but a left-right mirror must also swap the
# left/right lung labels (a rule no library has), or the flipped case teaches the network wrong sides.
def _make_lr_flip():
    from monai.transforms import MapTransform, RandomizableTransform

    class RandFlipLeftRightd(RandomizableTransform, MapTransform):
        """Mirror (C, z, y, x) arrays along x (patient left-right) and swap left/right lung labels,
        so that label 1 stays the lung on the patient's-left side of the (mirrored) image."""

        def __init__(self, keys, label_key: str = "label", prob: float = 0.5, allow_missing_keys: bool = False):
            MapTransform.__init__(self, keys, allow_missing_keys)
            RandomizableTransform.__init__(self, prob)
            self.label_key = label_key

        def __call__(self, data):
            d = dict(data)
            self.randomize(None)
            if not self._do_transform:
                return d
            for key in self.key_iterator(d):
                x = torch.flip(torch.as_tensor(d[key]), dims=(-1,))
                if key == self.label_key:
                    x = swap_left_right(x.clone())
                d[key] = x
            return d

    return RandFlipLeftRightd


_LAZY: dict[str, Any] = {}


def __getattr__(name: str):
    # MONAI takes seconds to import; build the MONAI-based class only when someone asks for it.
    if name == "RandFlipLeftRightd":
        if name not in _LAZY:
            _LAZY[name] = _make_lr_flip()
        return _LAZY[name]
    raise AttributeError(name)
