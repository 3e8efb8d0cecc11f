"""Statistics of a labelmap: volumes, HU, components, lesion percent; Dice and HD95 against a reference.

Conventions: labelmaps are uint8 sitk images (1 = patient's left lung, 2 = right
lung, 3 = lesion) on the CT's grid; arrays are (z, y, x), spacing (x, y, z) mm.

**Lesion side rule.** Lesion voxels carry label 3, so they belong to neither lung
label. Each lesion voxel is given to the lung whose nearest lung voxel (label 1
or 2) is closest to it in millimetres (a Euclidean distance transform computed on
a grid of ≈ 2 mm cells over the lesions' bounding box plus a 20 mm margin). When
no lung voxel lies in that box, the side comes from patient coordinates: LPS +x
(patient's left) of the midpoint between the two lungs' centroids. Then

    lesion % of a lung = lesion voxels assigned to it / (its lung voxels + those lesion voxels) × 100
    lesion % total     = all lesion voxels / (all lung voxels + all lesion voxels) × 100
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTAnalysisLib.constants import LABEL_NAMES, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.geometry import bounding_box
from CovidCTAnalysisLib.loading.volume import patient_left_axis, voxel_volume_ml

SIDE_GRID_MM = 2.0  # cell size of the nearest-lung search
SIDE_MARGIN_MM = 20.0  # how far around the lesions lung voxels are looked for
SIDE_MAX_CELLS = 8_000_000  # cap on the search grid (memory: 3 int32 indices per cell)


def segment_statistics(image: sitk.Image, labelmap: sitk.Image) -> list[dict]:
    """Per segment (1, 2, 3): name, label, n_voxels, volume_ml, mean_hu, sd_hu, n_components.

    ``mean_hu``/``sd_hu`` (sample SD) are None for an empty segment. ``n_components``
    counts 26-connected components (for the lesion label: the number of separate
    lesions). Work is done inside the labelled voxels' bounding box only.
    """
    lab = sitk.GetArrayViewFromImage(labelmap)
    ct = sitk.GetArrayViewFromImage(image)
    vml = voxel_volume_ml(labelmap)
    box = bounding_box(lab > 0)
    out = []
    for label, name in LABEL_NAMES.items():
        n, n_comp, mean, sd = 0, 0, None, None
        if box is not None:
            sel = lab[box] == label
            n = int(np.count_nonzero(sel))
            if n:
                values = ct[box][sel].astype(np.float64)
                mean = float(values.mean())
                sd = float(values.std(ddof=1)) if n > 1 else 0.0
                inner = bounding_box(sel)
                mask = sitk.GetImageFromArray(sel[inner].astype(np.uint8))
                components = sitk.ConnectedComponent(mask, True)  # keep a reference: the view does not
                n_comp = int(sitk.GetArrayViewFromImage(components).max())
        out.append({"name": name, "label": label, "n_voxels": n, "volume_ml": n * vml,
                    "mean_hu": mean, "sd_hu": sd, "n_components": n_comp})
    return out


def _side_grid_steps(shape: tuple[int, int, int], spacing_zyx: np.ndarray) -> np.ndarray:
    steps = np.maximum(1, np.round(SIDE_GRID_MM / spacing_zyx)).astype(int)
    while np.prod(np.ceil(np.array(shape) / steps)) > SIDE_MAX_CELLS:
        steps += 1
    return steps


def _block_sums(mask: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Number of True voxels in each ``steps``-sized block (the coarse grid's cells)."""
    pad = [(0, (-n) % int(s)) for n, s in zip(mask.shape, steps, strict=True)]
    m = np.pad(mask, pad) if any(p[1] for p in pad) else mask
    z, y, x = (n // int(s) for n, s in zip(m.shape, steps, strict=True))
    sz, sy, sx = (int(s) for s in steps)
    return m.reshape(z, sz, y, sy, x, sx).sum(axis=(1, 3, 5), dtype=np.int64)


def lesion_sides(labelmap: sitk.Image) -> tuple[int, int]:
    """(lesion voxels assigned to the left lung, to the right lung) by the module's side rule."""
    arr = sitk.GetArrayViewFromImage(labelmap)
    lesion = arr == LESION
    les_box = bounding_box(lesion)
    if les_box is None:
        return 0, 0
    n_lesion = int(np.count_nonzero(lesion[les_box]))
    spacing_zyx = np.array(labelmap.GetSpacing()[::-1], dtype=float)
    margin = np.ceil(SIDE_MARGIN_MM / spacing_zyx).astype(int)
    lo = np.array([max(sl.start - m, 0) for sl, m in zip(les_box, margin, strict=True)])
    hi = np.array([min(sl.stop + m, n) for sl, m, n in zip(les_box, margin, arr.shape, strict=True)])
    box = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    steps = _side_grid_steps(box.shape, spacing_zyx)
    coarse = box[::steps[0], ::steps[1], ::steps[2]]  # one sample per cell: the cell's first voxel
    lung = (coarse == LEFT_LUNG) | (coarse == RIGHT_LUNG)
    if lung.any():
        nearest = ndimage.distance_transform_edt(~lung, sampling=spacing_zyx * steps, return_distances=False,
                                                 return_indices=True)
        side = coarse[tuple(nearest)]  # label of the nearest lung cell, per cell
        per_cell = _block_sums(box == LESION, steps)
        n_left = int(per_cell[side == LEFT_LUNG].sum())
        return n_left, n_lesion - n_left
    # no lung nearby: split by patient coordinates around the midpoint of the lungs (or the image centre)
    axis, sign = patient_left_axis(labelmap)
    centres = [np.nonzero(arr == lab)[axis].mean() for lab in (LEFT_LUNG, RIGHT_LUNG) if (arr == lab).any()]
    mid = float(np.mean(centres)) if centres else (arr.shape[axis] - 1) / 2.0
    idx = np.nonzero(lesion)[axis]
    n_left = int(np.count_nonzero((idx - mid) * sign > 0))
    return n_left, n_lesion - n_left


def lesion_percent(labelmap: sitk.Image) -> dict[str, float | None]:
    """{"left", "right", "total"}: lesion percent of each lung and of both (None where the denominator is 0)."""
    arr = sitk.GetArrayViewFromImage(labelmap)
    n_left_lung, n_right_lung, n_lesion = (int(np.count_nonzero(arr == v)) for v in (LEFT_LUNG, RIGHT_LUNG, LESION))
    les_left, les_right = lesion_sides(labelmap)

    def pct(num: int, den: int) -> float | None:
        return 100.0 * num / den if den else None

    return {
        "left": pct(les_left, n_left_lung + les_left),
        "right": pct(les_right, n_right_lung + les_right),
        "total": pct(n_lesion, n_left_lung + n_right_lung + n_lesion),
        "lesion_voxels_left": les_left,
        "lesion_voxels_right": les_right,
        "rule": "lesion voxel -> side of the nearest lung voxel (mm); % = lesion / (lung + its lesion)",
    }


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty (undefined)."""
    sa, sb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if sa + sb == 0:
        return None
    return 2.0 * int(np.count_nonzero(a & b)) / (sa + sb)


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing_zyx) -> float | None:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI), None if either mask is empty.

    The masks are cropped to their joint bounding box plus one voxel first, which
    leaves the surface distances unchanged and keeps memory small.
    """
    if not a.any() or not b.any():
        return None
    sl = bounding_box(a | b, pad=1)
    pa = np.pad(a[sl], 1)
    pb = np.pad(b[sl], 1)
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    t_a = torch.from_numpy(pa[None, None].astype(np.float32))
    t_b = torch.from_numpy(pb[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's internal deprecation notice, not ours
        value = compute_hausdorff_distance(t_a, t_b, include_background=True, percentile=95,
                                           spacing=[float(s) for s in spacing_zyx])
    v = float(value.reshape(-1)[0])
    return v if math.isfinite(v) else None


def compare_to_reference(labelmap: sitk.Image, reference: sitk.Image) -> dict[str, dict]:
    """Dice and HD95 (mm) per segment; ``reference`` must already be on ``labelmap``'s grid with labels 1/2/3."""
    ours = sitk.GetArrayViewFromImage(labelmap)
    ref = sitk.GetArrayViewFromImage(reference)
    if ours.shape != ref.shape:
        raise ValueError(f"reference shape {ref.shape} differs from labelmap shape {ours.shape}; resample it first")
    spacing_zyx = labelmap.GetSpacing()[::-1]
    dices, hds = {}, {}
    for label, name in LABEL_NAMES.items():
        a, b = ours == label, ref == label
        dices[name] = dice(a, b)
        hds[name] = hd95_mm(a, b, spacing_zyx)
    return {"dice": dices, "hd95_mm": hds}


# --- reference segmentations ------------------------------------------------------------

REFERENCE_LABELS_HELP = (
    "map the reference's values to ours (1 = left lung, 2 = right lung, 3 = lesion): "
    "'SRC=DST' items separated by ';' (or ','), SRC a value, a comma list or a range a-b, DST a number or "
    "left/right/lesion; unmapped values become background. Examples: '1=1,2=2,3=3', "
    "'13,14=1;15-17=2', '1=lesion'"
)
_TARGETS = {"left": LEFT_LUNG, "right": RIGHT_LUNG, "lesion": LESION}
_ITEM = re.compile(r"\s*(?P<src>\d+(?:\s*-\s*\d+)?(?:\s*,\s*\d+(?:\s*-\s*\d+)?)*)\s*=\s*"
                   r"(?P<dst>\d+|left|right|lesion)\s*(?:[;,]|$)", re.IGNORECASE)


def parse_reference_labels(spec: str) -> dict[int, int]:
    """Parse ``--reference-labels`` into {reference value: our label}.

    >>> parse_reference_labels("13,14=1;15-17=2")
    {13: 1, 14: 1, 15: 2, 16: 2, 17: 2}
    >>> parse_reference_labels("1=1,2=2,3=lesion")
    {1: 1, 2: 2, 3: 3}
    """
    text = spec.strip()
    mapping: dict[int, int] = {}
    pos = 0
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"--reference-labels {spec!r}: cannot parse from {text[pos:]!r}; expected "
                             + REFERENCE_LABELS_HELP)
        dst_text = m.group("dst").lower()
        dst = _TARGETS.get(dst_text, None) if not dst_text.isdigit() else int(dst_text)
        if dst not in (0, LEFT_LUNG, RIGHT_LUNG, LESION):
            raise InputError(f"--reference-labels {spec!r}: target {dst} is not one of 0, 1 (left lung), "
                             "2 (right lung), 3 (lesion)")
        for part in m.group("src").split(","):
            lo_hi = [int(v) for v in part.split("-")]
            lo, hi = lo_hi[0], lo_hi[-1]
            if hi < lo:
                raise InputError(f"--reference-labels {spec!r}: range {part.strip()} runs backwards")
            for v in range(lo, hi + 1):
                if v in mapping and mapping[v] != dst:
                    raise InputError(f"--reference-labels {spec!r}: value {v} is mapped twice "
                                     f"({mapping[v]} and {dst})")
                mapping[v] = dst
        pos = m.end()
    if not mapping:
        raise InputError(f"--reference-labels {spec!r} is empty; expected " + REFERENCE_LABELS_HELP)
    return mapping


def load_reference(path: str | Path, grid: sitk.Image, label_map: dict[int, int] | None = None) -> sitk.Image:
    """Read a reference segmentation, map its values to 1/2/3 and bring it onto ``grid`` (nearest neighbour).

    Raises InputError when it is unreadable, not 3-D, holds unmapped values without
    ``label_map``, is empty after mapping, or lies mostly (> 50 % of its labelled
    volume) outside ``grid``'s physical region.
    """
    from CovidCTAnalysisLib.loading.checks import check_dimension
    from CovidCTAnalysisLib.loading.load import read_image_file

    path = Path(path)
    ref = read_image_file(path, "reference")
    check_dimension(ref, where=f"reference {path}")
    arr = sitk.GetArrayFromImage(ref)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"reference {path} holds non-integer values (e.g. {arr[arr != np.round(arr)][:1]}); "
                             "expected a label image")
    arr = arr.astype(np.int64)
    values = sorted(int(v) for v in np.unique(arr) if v != 0)
    if label_map is None:
        extra = [v for v in values if v not in (LEFT_LUNG, RIGHT_LUNG, LESION)]
        if extra:
            raise InputError(f"reference {path} holds label values {values}; without --reference-labels only "
                             f"1, 2, 3 are understood (extra: {extra[:10]}). Pass --reference-labels, e.g. "
                             "'13,14=1;15-17=2'")
        label_map = {LEFT_LUNG: LEFT_LUNG, RIGHT_LUNG: RIGHT_LUNG, LESION: LESION}
    lut = np.zeros(max(values + list(label_map) + [0]) + 1, dtype=np.uint8)
    for src, dst in label_map.items():
        if src >= 0:
            lut[src] = dst
    mapped = lut[np.clip(arr, 0, None)]
    n_ref = int(np.count_nonzero(mapped))
    if n_ref == 0:
        raise InputError(f"reference {path} has no voxels with a mapped label (values present: {values[:20]}, "
                         f"map: {label_map}); expected lung or lesion labels")
    mapped_img = sitk.GetImageFromArray(mapped)
    mapped_img.CopyInformation(ref)
    if mapped_img.IsSameImageGeometryAs(grid, 1e-3, 1e-3):  # tolerance: 1e-3 of a voxel
        out = mapped_img
    else:
        out = sitk.Resample(mapped_img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        ref_ml = n_ref * voxel_volume_ml(mapped_img)
        in_ml = int(np.count_nonzero(sitk.GetArrayViewFromImage(out))) * voxel_volume_ml(grid)
        if in_ml < 0.5 * ref_ml:
            raise InputError(
                f"reference {path} covers a different physical region: only {100 * in_ml / ref_ml:.0f} % of its "
                f"{ref_ml:.1f} mL of labels fall inside the CT (reference origin "
                f"{tuple(round(v, 1) for v in ref.GetOrigin())}, CT origin {tuple(round(v, 1) for v in grid.GetOrigin())}"
                "); expected a segmentation of this CT")
    out.CopyInformation(grid)
    return out
