"""Lungs without model weights: HU thresholds and morphology.

``segment_lungs`` is the lung half of ``--method threshold``; the classifier
uses ``lung_extent`` of its result to find the lung slices and the lung box,
and ``compare_lungs`` cross-checks a model's lungs against it.

Method (on a ~2 mm grid aligned with the patient axes, see ``grid``):

1. Body: the largest region above ``BODY_THRESHOLD_HU`` with its axial holes
   filled; air outside it (room air, air between table and back) is dropped.
2. Air inside the body below ``LUNG_BAND_HU[1]``.
3. Trachea and main bronchi are grown from a trachea seed and removed
   (``airway``).
4. Connected pieces of at least ``MIN_PIECE_ML`` whose median HU is that of
   lung, not of pure gas (bowel, stomach: median below ``GAS_MEDIAN_HU``), and
   that are not tiny next to the largest, are kept.
5. They grow by up to ``LUNG_GROW_MM`` through voxels between
   ``GAS_MEDIAN_HU`` and ``DENSE_LUNG_MAX_HU``: dependent density and partial
   volume at the pleura join the lung next to them, pure gas does not.
6. Left/right by patient coordinates (``lung_sides``).
6b. Dense (consolidated) lung bounded by ribs, diaphragm and mediastinum
   joins the lung next to it (``dense_lung``).
7. Each lung is closed and its axial holes up to ``MAX_HOLE_MM2`` filled, so
   vessels and dense lesions inside it count as lung.
8. Labels go back to the input grid by nearest-neighbour resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from CovidCTAnalysisLib.constants import DENSE_LUNG_MAX_HU, LEFT_LUNG, LESION, LUNG_BAND_HU, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.geometry import bounding_box, patient_axes
from CovidCTAnalysisLib.masks import pieces
from CovidCTAnalysisLib.threshold.airway import find_trachea_seed, grow_airway
from CovidCTAnalysisLib.threshold.body_mask import body_and_inside_air, fill_holes_axial
from CovidCTAnalysisLib.threshold.dense_lung import add_dense_lung
from CovidCTAnalysisLib.threshold.grid import array_to_image, labels_to_grid, to_working
from CovidCTAnalysisLib.threshold.lung_sides import split_left_right

MIN_PIECE_ML = 0.5  # smaller air pockets inside the body are not lung
MIN_PIECE_FRACTION = 0.1  # of the largest lung piece: drops oesophageal and stray gas
GAS_MEDIAN_HU = -950.0  # bowel/stomach gas is nearly pure air; lung has tissue in it
LUNG_GROW_MM = 20.0  # how far aerated lung may grow into denser (dependent) lung
LUNG_CLOSING_MM = 6.0  # closes over vessels and lesions at the lung edge
# Axial holes up to this size are filled (vessels, nodules, lesions); larger
# ones are the diaphragm dome seen from above, or the heart, and stay out.
MAX_HOLE_MM2 = 700.0
COMPARE_FLAG_FRACTION = 0.15


@dataclass(frozen=True)
class LungExtent:
    """Where the lungs are, in index terms of the label image.

    ``z_indices``: indices along the array's slowest axis (numpy axis 0, the
    image's index k) whose slice holds at least ``min_area_mm2`` of lung.
    ``bbox_index``: (x0, y0, z0, x1, y1, z1) image index box of all lung
    voxels, inclusive-exclusive. ``axial_axis``: the numpy axis (0 = z, 1 = y,
    2 = x) whose direction is closest to the patient's superior-inferior axis
    (LPS z); ``axial_indices``: the indices along it whose slice holds at least
    ``min_area_mm2`` of lung. For the usual axial scans ``axial_axis == 0`` and
    ``axial_indices == z_indices``; for permuted directions use
    ``axial_axis``/``axial_indices`` to get true axial lung slices.
    """

    z_indices: tuple[int, ...]
    bbox_index: tuple[int, int, int, int, int, int]
    axial_axis: int
    axial_indices: tuple[int, ...]
    left_ml: float
    right_ml: float


def _keep_lung_pieces(candidates: np.ndarray, hu: np.ndarray, voxel_ml: float) -> np.ndarray:
    p = pieces(candidates)
    if p.n == 0:
        return np.zeros_like(candidates)
    # Median HU below GAS_MEDIAN_HU <=> more than half the voxels below it.
    gas = np.bincount(p.labels[hu < GAS_MEDIAN_HU], minlength=p.n + 1)
    ok = (p.sizes * voxel_ml >= MIN_PIECE_ML) & (gas <= 0.5 * p.sizes)
    ok[0] = False
    if not ok.any():
        return np.zeros_like(candidates)
    ok &= p.large(MIN_PIECE_FRACTION, among=ok)
    return p.select(ok)


def _radius(spacing: tuple[float, ...], radius_mm: float, size: tuple[int, ...]) -> list[int]:
    """Kernel radius in voxels (x, y, z), flattened along axes the volume is too thin for."""
    return [min(max(1, int(round(radius_mm / s))), (n - 1) // 2) for s, n in zip(spacing, size, strict=True)]


def _fill_each_lung(labels: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Close and fill each lung; where the filled lungs overlap the original label wins."""
    out = labels.copy()
    objects = ndi.find_objects(labels)
    for value in (LEFT_LUNG, RIGHT_LUNG):
        if value > len(objects) or objects[value - 1] is None:
            continue
        # Work on the lung's box plus a margin for the closing.
        radius = _radius(spacing, LUNG_CLOSING_MM, labels.shape[::-1])
        pad = [r + 1 for r in radius[::-1]]  # (z, y, x)
        box = tuple(
            slice(max(0, s.start - p), min(n, s.stop + p))
            for s, p, n in zip(objects[value - 1], pad, labels.shape, strict=True)
        )
        mask = labels[box] == value
        image = sitk.GetImageFromArray(np.pad(mask, [(p, p) for p in pad]).astype(np.uint8))
        closed = sitk.BinaryMorphologicalClosing(image, radius, sitk.sitkBall)
        crop = tuple(slice(p, -p) for p in pad)
        closed_arr = sitk.GetArrayViewFromImage(closed)[crop].astype(bool)
        max_hole = int(MAX_HOLE_MM2 / (spacing[0] * spacing[1]))
        filled = fill_holes_axial(closed_arr | mask, max_hole) & body[box]
        region = out[box]
        region[filled & (region == 0)] = value
    return out


def segment_lungs_working(image: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """Lung labels (z, y, x) on the aligned working grid, and that grid's image.

    Raises ``InputError`` if no lungs are found.
    """
    work = to_working(image)
    spacing = work.image.GetSpacing()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    hu = work.hu
    body, air = body_and_inside_air(hu, work.outside_fov, LUNG_BAND_HU[1])
    seed = find_trachea_seed(hu, air, body, spacing)
    airway = np.zeros_like(air)
    if seed is not None:
        airway = ndi.binary_dilation(grow_airway(work.image, air, seed))
    lung = _keep_lung_pieces(air & ~airway, hu, voxel_ml)
    if not lung.any():
        raise InputError(
            "no lungs found by the HU threshold method: looked for air-filled regions "
            f"(HU below {LUNG_BAND_HU[1]:.0f}) of at least {MIN_PIECE_ML:.1f} mL enclosed by the body "
            f"(HU above the body threshold) with a median HU of lung (at least {GAS_MEDIAN_HU:.0f}). "
            "Check that the image is a chest CT in Hounsfield units that includes the lungs."
        )
    # Hysteresis: grow the aerated lung into denser lung next to it (never into gas).
    denser = body & (hu >= GAS_MEDIAN_HU) & (hu < DENSE_LUNG_MAX_HU) & ~airway
    steps = max(1, int(round(LUNG_GROW_MM / spacing[0])))
    lung = ndi.binary_dilation(lung, iterations=steps, mask=denser)
    labels = split_left_right(lung, body, spacing)
    labels = add_dense_lung(labels, hu, body, airway, spacing)
    labels = _fill_each_lung(labels, body, spacing)
    return labels, work.image


def segment_lungs(image: sitk.Image) -> sitk.Image:
    """uint8 lung labels on the input grid: 1 = patient's left lung, 2 = right lung.

    Airways (trachea, main bronchi) are excluded; vessels and dense lesions
    inside a lung are included. Left/right come from patient coordinates (the
    direction matrix), never from array order. Raises ``errors.InputError``
    if no lungs are found; the message says what was looked for.
    """
    labels, work = segment_lungs_working(image)
    return labels_to_grid(array_to_image(labels, work), image)


def _axis_closest_to_superior(image: sitk.Image) -> int:
    return patient_axes(image).numpy_axis_along(2)[0]


def lung_extent(lungs: sitk.Image, min_area_mm2: float = 100.0) -> LungExtent:
    """Lung slices and lung box of a label image (any non-zero label is lung).

    A slice counts as a lung slice when it holds at least ``min_area_mm2`` of
    lung. See ``LungExtent`` for the fields; raises ``InputError`` if the
    image holds no lung.
    """
    arr = sitk.GetArrayViewFromImage(lungs)
    lung = arr > 0
    if not lung.any():
        raise InputError("the lung label image is empty: expected voxels labelled 1 (left) or 2 (right)")
    sx, sy, sz = lungs.GetSpacing()
    spacing_zyx = (sz, sy, sx)
    voxel_ml = sx * sy * sz / 1000.0

    def slices_along(axis: int) -> tuple[int, ...]:
        others = [a for a in range(3) if a != axis]
        area = lung.sum(axis=tuple(others)) * spacing_zyx[others[0]] * spacing_zyx[others[1]]
        return tuple(int(i) for i in np.nonzero(area >= min_area_mm2)[0])

    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in bounding_box(lung))
    axial = _axis_closest_to_superior(lungs)
    return LungExtent(
        z_indices=slices_along(0),
        bbox_index=(x0, y0, z0, x1, y1, z1),
        axial_axis=axial,
        axial_indices=slices_along(axial),
        left_ml=float((arr == LEFT_LUNG).sum() * voxel_ml),
        right_ml=float((arr == RIGHT_LUNG).sum() * voxel_ml),
    )


def _physical_x(image: sitk.Image, index_zyx: tuple[np.ndarray, ...] | np.ndarray) -> np.ndarray:
    """LPS x (mm, + = patient's left) of array indices (z, y, x)."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    z, y, x = (np.asarray(v, dtype=float) for v in index_zyx)
    return image.GetOrigin()[0] + d[0, 0] * sx * x + d[0, 1] * sy * y + d[0, 2] * sz * z


def _lesions_to_sides(labels: np.ndarray, image: sitk.Image, midline_x: float) -> np.ndarray:
    """Lesion voxels (3) become left or right lung by their side of ``midline_x`` (LPS mm)."""
    lesion = np.nonzero(labels == LESION)
    if lesion[0].size == 0:
        return labels
    out = labels.copy()
    out[lesion] = np.where(_physical_x(image, lesion) > midline_x, LEFT_LUNG, RIGHT_LUNG)
    return out


def compare_lungs(model_labels: sitk.Image, threshold_lungs: sitk.Image) -> dict:
    """Cross-check a model's lung volumes against the threshold lungs.

    Either image may hold lesion voxels (label 3); as lesions are part of a
    lung they count towards the lung on their side of the midpoint between the
    threshold lungs' centres (patient coordinates). The model labels are
    resampled (nearest neighbour) onto the threshold grid. Returns
    ``{"left": rel_diff, "right": rel_diff, "flag": bool, "message": str}``
    plus the volumes (``left_ml_model`` ...), where rel_diff is
    |V_model - V_threshold| / V_threshold (1.0 if only the threshold lung is empty)
    and ``flag`` is set when either exceeds 15 %.
    """
    thr = sitk.GetArrayFromImage(threshold_lungs)
    model = sitk.GetArrayFromImage(labels_to_grid(model_labels, threshold_lungs))
    # Lung centres only place the midline, so a strided view (~2 M voxels) is plenty; the full
    # 78 M-voxel volume made this the slowest step of a 512x512x300 analysis.
    step = max(1, int(round(np.cbrt(thr.size / 2e6))))
    sub = thr[::step, ::step, ::step]
    centres = [tuple(step * np.asarray(c)) for c in
               ndi.center_of_mass(np.ones(sub.shape, dtype=np.uint8), sub, (LEFT_LUNG, RIGHT_LUNG))]
    found = [c for c in centres if np.all(np.isfinite(c))]
    midline_x = float(np.mean([_physical_x(threshold_lungs, c) for c in found])) if found else 0.0
    thr = _lesions_to_sides(thr, threshold_lungs, midline_x)
    model = _lesions_to_sides(model, threshold_lungs, midline_x)
    voxel_ml = float(np.prod(threshold_lungs.GetSpacing())) / 1000.0
    result: dict = {}
    parts = []
    for name, value in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        v_thr = float(np.count_nonzero(thr == value)) * voxel_ml
        v_model = float(np.count_nonzero(model == value)) * voxel_ml
        # An empty threshold lung counts as 100 % apart from a model lung (kept finite for JSON).
        rel = abs(v_model - v_thr) / v_thr if v_thr > 0 else (1.0 if v_model > 0 else 0.0)
        result[name] = rel
        result[f"{name}_ml_model"] = v_model
        result[f"{name}_ml_threshold"] = v_thr
        parts.append(f"{name} lung {v_model:.0f} mL (model) vs {v_thr:.0f} mL (threshold), {100 * rel:.0f} % apart")
    result["flag"] = bool(result["left"] > COMPARE_FLAG_FRACTION or result["right"] > COMPARE_FLAG_FRACTION)
    limit = f"{100 * COMPARE_FLAG_FRACTION:.0f} %"
    verdict = f"DISAGREE by more than {limit}" if result["flag"] else f"agree within {limit}"
    result["message"] = f"model and threshold lungs {verdict}: " + "; ".join(parts)
    return result
