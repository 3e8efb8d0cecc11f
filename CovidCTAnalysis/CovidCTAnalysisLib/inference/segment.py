"""Left lung, right lung and lesions with the MONAI 3D U-Net.

1. Crop the lung box (from the HU-threshold lungs) plus ``margin_mm``.
2. ``transforms.segmenter_preprocess``: resample to the model's spacing on an
   axis-aligned LPS grid, clip and scale HU (the function training uses).
3. ``monai.inferers.sliding_window_inference`` with the model's ROI and overlap
   (Gaussian blending); CUDA with float16 autocast when the device is CUDA, float32
   on the CPU.
4. Map back to the input grid: the class probabilities are interpolated (trilinear)
   onto the crop and the argmax taken slab by slab (``probabilities_to_labels``), so
   no full-resolution probability maps are held at once.
5. ``postprocess`` (largest components, left/right by patient coordinates, lesion pieces
   that reach the lungs, lesion edges on the image's half-way HU), then paste the crop into a labelmap of the input grid.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import SimpleITK as sitk
import torch

from CovidCTAnalysisLib.constants import BACKGROUND, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError, ModelError
from CovidCTAnalysisLib.geometry import IDENTITY_DIRECTION, direction_matrix, is_axis_aligned, patient_axes
from CovidCTAnalysisLib.inference.postprocess import postprocess_with_notes
from CovidCTAnalysisLib.loading.volume import CTVolume, labelmap_like
from CovidCTAnalysisLib.models.folder import LoadedModel, segmentation_channel_labels
from CovidCTAnalysisLib.models.transforms import (
    orient_array_lps,
    roi_size_zyx,
    segmenter_preprocess,
    segmenter_settings,
)
from CovidCTAnalysisLib.progress import Progress


def lung_box_with_margin(image: sitk.Image, lung_box, margin_mm: float) -> tuple[int, int, int, int, int, int]:
    """(x0, y0, z0, x1, y1, z1) inclusive-exclusive index box grown by ``margin_mm``, clipped to the image.

    ``lung_box`` is a ``LungExtent`` (its ``bbox_index``), a 6-tuple in the same form, or
    None for the whole image.
    """
    size = image.GetSize()
    if lung_box is None:
        return (0, 0, 0, *size)
    box = getattr(lung_box, "bbox_index", lung_box)
    if len(box) != 6:
        raise ValueError(f"lung box {box!r}; expected (x0, y0, z0, x1, y1, z1)")
    lo, hi = [int(v) for v in box[:3]], [int(v) for v in box[3:]]
    if any(a >= b for a, b in zip(lo, hi, strict=True)) or any(a < 0 for a in lo) or any(
            b > s for b, s in zip(hi, size, strict=True)):
        raise InputError(f"lung box {tuple(box)} is empty or outside the image of size {size}")
    grow = [int(np.ceil(margin_mm / s)) for s in image.GetSpacing()]
    lo = [max(0, a - g) for a, g in zip(lo, grow, strict=True)]
    hi = [min(s, b + g) for b, g, s in zip(hi, grow, size, strict=True)]
    return (*lo, *hi)  # type: ignore[return-value]


def predict_probabilities(x: torch.Tensor, model: LoadedModel, preprocessing: dict, device: torch.device) -> torch.Tensor:
    """Softmax (C, z, y, x) on the model grid by sliding-window inference (also used by interactive refining)."""
    from monai.inferers import sliding_window_inference

    p = segmenter_settings(preprocessing)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    model.module.eval()
    with torch.inference_mode(), autocast:
        logits = sliding_window_inference(
            x.to(device), roi_size=roi_size_zyx(p), sw_batch_size=int(p["sw_batch_size"]), predictor=model.module,
            overlap=float(p["sw_overlap"]), mode="gaussian")
    return torch.softmax(logits.float(), dim=1)[0].cpu()


def probabilities_to_labels(probs: np.ndarray, grid: sitk.Image, target: sitk.Image,
                            channel_labels: dict[int, int]) -> np.ndarray:
    """(C, z, y, x) probabilities on ``grid`` → (z, y, x) uint8 labels on ``target``'s grid.

    Trilinear interpolation of the probabilities, then argmax. When ``target`` is stored
    along the patient axes (the usual case: any flips/permutations, no obliquity) this is
    separable and runs in slabs (``_separable_argmax``); otherwise each class is resampled
    with SimpleITK in turn while a running argmax is kept. Either way at most one
    full-resolution probability map exists at once.
    """
    lut = np.zeros(max(channel_labels) + 1, dtype=np.uint8)
    for c, value in channel_labels.items():
        lut[c] = value
    if is_axis_aligned(target) and grid.GetDirection() == IDENTITY_DIRECTION:
        return lut[_separable_argmax(probs, grid, target)]
    return lut[_resampled_argmax(probs, grid, target, channel_labels)]


def _linear_weights(positions: np.ndarray, origin: float, spacing: float, n: int):
    """Lower neighbour index and weight of the upper one, per position; clamped at the ends."""
    ci = (positions - origin) / spacing
    i0 = np.clip(np.floor(ci).astype(np.int64), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = np.clip(ci - i0, 0.0, 1.0).astype(np.float32) if n > 1 else np.zeros(len(ci), np.float32)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(w)


# Hand-written for speed and memory: one separable interpolation in slabs instead of an sitk.Resample per class
# (2.8x faster in the issue-14 review), never a full-resolution map per class.
def _separable_argmax(probs: np.ndarray, grid: sitk.Image, target: sitk.Image, slab: int = 8) -> np.ndarray:
    """Argmax channel on ``target`` (axis-aligned with the identity-direction ``grid``)."""
    out = np.zeros(target.GetSize()[::-1], dtype=np.uint8)
    view = orient_array_lps(out, target)  # (S, P, L) view: writes land in ``out``
    d = direction_matrix(target)
    axes = patient_axes(d)
    size, spacing, origin = target.GetSize(), target.GetSpacing(), target.GetOrigin()
    weights = []
    for out_axis in range(3):  # 0: S (LPS z), 1: P (y), 2: L (x)
        lps = 2 - out_axis
        j = axes.index_axis_along(lps)
        pos = origin[lps] + d[lps, j] * spacing[j] * np.arange(size[j])
        pos = np.sort(pos)  # the view runs towards +LPS
        weights.append(_linear_weights(pos, grid.GetOrigin()[lps], grid.GetSpacing()[lps], grid.GetSize()[lps]))
    p = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    # Two channels (the interactive model): the argmax is the sign of their difference, and linear interpolation
    # commutes with differences, so one map is interpolated instead of two (a third of a click's time went here).
    two = p.shape[0] == 2
    if two:
        p = (p[1] - p[0])[None]
    (z0, z1, wz), (y0, y1, wy), (x0, x1, wx) = weights
    p = torch.lerp(p[..., x0], p[..., x1], wx)  # x first, on the coarse z/y: small
    for start in range(0, view.shape[0], slab):
        sl = slice(start, min(start + slab, view.shape[0]))
        a = torch.lerp(p[:, z0[sl]], p[:, z1[sl]], wz[sl].view(1, -1, 1, 1))
        a = torch.lerp(a[:, :, y0], a[:, :, y1], wy.view(1, 1, -1, 1))
        # numpy's argmax over the channel axis is ~ 7x torch's here; ties go to channel 0 both ways
        view[sl] = (a[0] > 0).numpy() if two else np.argmax(a.numpy(), axis=0)
    return out


def _resampled_argmax(probs: np.ndarray, grid: sitk.Image, target: sitk.Image,
                      channel_labels: dict[int, int]) -> np.ndarray:
    shape = target.GetSize()[::-1]
    best = np.full(shape, -1.0, dtype=np.float32)
    arg = np.zeros(shape, dtype=np.uint8)
    better = np.empty(shape, dtype=bool)
    for c in range(probs.shape[0]):
        src = sitk.GetImageFromArray(np.ascontiguousarray(probs[c], dtype=np.float32))
        src.CopyInformation(grid)
        outside = 1.0 if channel_labels[c] == BACKGROUND else 0.0
        res = sitk.Resample(src, target, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
        p = sitk.GetArrayViewFromImage(res)
        np.greater(p, best, out=better)
        np.copyto(best, p, where=better)  # copyto(where=) avoids the temporaries of fancy indexing
        np.copyto(arg, np.uint8(c), where=better)
        del res, p
    return arg


def segment(volume: CTVolume | sitk.Image, lung_box, model: LoadedModel, device: torch.device | str,
            progress: Progress | None = None, rib_cage: sitk.Image | None = None,
            notes: list[str] | None = None, below_diaphragm: sitk.Image | None = None) -> sitk.Image:
    """uint8 labelmap (1 left lung, 2 right lung, 3 lesion) on ``volume``'s grid, post-processed.

    ``lung_box``: ``LungExtent`` / (x0, y0, z0, x1, y1, z1) / None (see ``lung_box_with_margin``).
    ``rib_cage`` / ``below_diaphragm``: 0/1 on ``volume``'s grid (``threshold.rib_cage.lesion_bounds``); lesion
    outside the cage is removed, and so are lesion pieces lying mostly below the diaphragm. Notes from post-processing (e.g. a left/right swap) go to ``progress.log`` and, when ``notes`` is a
    list, are appended to it (``report.json``'s ``segmentation.postprocessing``).
    """
    progress = progress or Progress()
    image = volume.image if isinstance(volume, CTVolume) else volume
    meta = model.metadata
    if meta.task != "segmentation":
        raise ModelError(f"model {meta.id} is a {meta.task} model; segment needs a segmentation model")
    p = segmenter_settings(meta.preprocessing)
    channel_labels = segmentation_channel_labels(meta)
    device = torch.device(device)

    x0, y0, z0, x1, y1, z1 = lung_box_with_margin(image, lung_box, float(p["margin_mm"]))
    crop = image[x0:x1, y0:y1, z0:z1]  # keeps physical geometry
    progress.step("segment", 0.05, f"Resampling the lung box to {p['spacing_mm']} mm")
    prep = segmenter_preprocess(crop, p)
    n_vox = prep.image.size
    progress.step("segment", 0.15, f"Sliding-window inference on {prep.image.shape[::-1]} voxels ({device.type})")
    probs = predict_probabilities(torch.from_numpy(prep.image)[None, None], model, p, device).numpy()
    progress.step("segment", 0.75, "Mapping labels back to the image grid")
    crop_ref = sitk.Image(crop.GetSize(), sitk.sitkUInt8)
    crop_ref.CopyInformation(crop)
    del crop
    labels = probabilities_to_labels(probs, prep.grid, crop_ref, channel_labels)
    del probs, prep
    progress.step("segment", 0.85, "Post-processing (components, left/right, lesions in the rib cage and lungs, "
                                   "lesion edges)")
    has_lungs = LEFT_LUNG in channel_labels.values() or RIGHT_LUNG in channel_labels.values()
    cage, below = (None if m is None else sitk.GetArrayFromImage(m)[z0:z1, y0:y1, x0:x1] > 0
                   for m in (rib_cage, below_diaphragm))
    hu = sitk.GetArrayViewFromImage(image)[z0:z1, y0:y1, x0:x1]
    cleaned, changes = postprocess_with_notes(labelmap_like(labels, crop_ref), restrict_lesions=has_lungs,
                                            rib_cage=cage, hu=hu if p["lesion_edges"] else None,
                                            below_diaphragm=below)
    if not p["lesion_edges"] and (sitk.GetArrayViewFromImage(cleaned) == LESION).any():
        changes.append(f"lesion edges left as model {meta.id} drew them (its metadata: preprocessing.lesion_edges "
                       "is false)")
    for note in changes:
        progress.log(f"segmentation post-processing: {note}")
    if notes is not None:
        notes.extend(changes)
    full = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    full[z0:z1, y0:y1, x0:x1] = sitk.GetArrayViewFromImage(cleaned)
    progress.step("segment", 1.0, f"Segmented ({n_vox} model voxels)")
    return labelmap_like(full, image)
