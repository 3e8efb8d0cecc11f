"""Lesion candidates without model weights, and the ``--method threshold`` labelmap.

A naive HU band (ground glass + consolidation) inside the lungs lights up
every slice: vessels, their partial-volume halo and the pleural rim all fall in
it. The rule here, on an isotropic ``LESION_SPACING_MM`` grid, is:

1. *Vessels*: lung voxels denser than ``CONSOLIDATION_BAND_HU[0]`` that vanish
   under an opening of radius ``SOLID_OPENING_MM`` (thin bright structures);
   they and a ``VESSEL_HALO_MM`` halo around them are never lesion seeds.
   What survives the opening is *solid* (consolidation, or large vessels).
2. *Ground-glass seeds*: band voxels (``GGO_BAND_HU[0]`` ..
   ``CONSOLIDATION_BAND_HU[1]``) away from vessels and at least ``RIM_MM``
   inside the lung, where the mean HU of the surrounding parenchyma (the lung
   minus vessels, solid and rim, Gaussian-weighted with sigma
   ``LOCAL_SIGMA_MM``) is above ``LOCAL_MEAN_MIN_HU``: the parenchyma itself
   is hazy, not just a vessel passing by. Where the parenchyma has less than
   ``MIN_PARENCHYMA_SHARE`` of the weight there is no local mean and no seed.
3. *Consolidation seeds*: solid voxels that also survive an opening of radius
   ``SOLID_CORE_MM`` (hilar vessels with their bronchus do not) and lie at
   least ``SOLID_DEPTH_MM`` inside the lung.
4. Seed components smaller than ``MIN_LESION_MM3`` are dropped; the rest grow
   by up to ``GROW_MM`` through band voxels of the lung, so a lesion reaches the
   pleura.

Tuned on the three real COVID-CT-MD scans (slice-level labels; see
``benchmarks/eval_threshold_slices.py``) and the phantoms, with round numbers
kept on purpose. Consolidation that fills the lung out to the chest wall is
brought into the lungs by ``dense_lung`` (bounded by ribs, diaphragm and
mediastinum) and classed here like any lung; what that step leaves out (wide
consolidation lying on the diaphragm) cannot be found here.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, GGO_BAND_HU, LESION
from CovidCTAnalysisLib.masks import pieces
from CovidCTAnalysisLib.threshold.grid import array_to_image, labels_to_grid, to_isotropic
from CovidCTAnalysisLib.threshold.lungs import segment_lungs_working

LESION_SPACING_MM = 2.0
RIM_MM = 3.0  # partial volume at the pleura
SOLID_OPENING_MM = 4.0  # dense structures thinner than 8 mm are vessels
# Consolidation seeds survive this opening (12 mm across); hilar vessels and bronchi do not.
SOLID_CORE_MM = 6.0
VESSEL_HALO_MM = 2.0
LOCAL_SIGMA_MM = 4.0
MIN_PARENCHYMA_SHARE = 0.3  # of the Gaussian weight; less (hilum, inside solid) gives no local mean
LOCAL_MEAN_MIN_HU = -700.0  # normal parenchyma (without vessels) is about -850
SOLID_DEPTH_MM = 10.0
MIN_LESION_MM3 = 1000.0
GROW_MM = 4.0
_MARGIN_VOXELS = 3


def _ball(radius_vox: float) -> np.ndarray:
    r = int(np.floor(radius_vox))
    zz, yy, xx = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return zz**2 + yy**2 + xx**2 <= radius_vox**2 + 1e-6


def _balls(radius_mm: float, spacing_mm: float) -> list[np.ndarray]:
    """Balls whose successive application is a ball of ``radius_mm`` (Minkowski sum of balls).

    Small balls keep scipy's binary morphology fast on the isotropic grid.
    """
    radius = radius_mm / spacing_mm
    parts = []
    while radius > 2.0 + 1e-6:
        parts.append(2.0)
        radius -= 2.0
    if radius >= 1.0 - 1e-6:
        parts.append(radius)
    return [_ball(r) for r in parts]


def _erode(mask: np.ndarray, radius_mm: float, spacing_mm: float) -> np.ndarray:
    for ball in _balls(radius_mm, spacing_mm):
        mask = ndi.binary_erosion(mask, ball)
    return mask


def _dilate(mask: np.ndarray, radius_mm: float, spacing_mm: float) -> np.ndarray:
    for ball in _balls(radius_mm, spacing_mm):
        mask = ndi.binary_dilation(mask, ball)
    return mask


def _opening(mask: np.ndarray, radius_mm: float, spacing_mm: float) -> np.ndarray:
    return _dilate(_erode(mask, radius_mm, spacing_mm), radius_mm, spacing_mm)


def _local_mean(hu: np.ndarray, weight: np.ndarray, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """Gaussian-weighted mean HU over ``weight`` voxels (normalised convolution)."""
    sigma = sigma_mm / spacing_mm
    num = ndi.gaussian_filter(np.where(weight, hu, 0.0).astype(np.float32), sigma)
    den = ndi.gaussian_filter(weight.astype(np.float32), sigma)
    # Where little parenchyma is near (around the hilum, inside solid regions) there is no mean.
    return np.where(den > MIN_PARENCHYMA_SHARE, num / np.maximum(den, 1e-6), -np.inf)


def lesion_mask_array(hu: np.ndarray, lung: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The rule of this module on arrays: bool lesion mask for ``lung`` (z, y, x, isotropic ``spacing_mm``)."""
    inner = _erode(lung, RIM_MM, spacing_mm)
    deep = _erode(inner, SOLID_DEPTH_MM - RIM_MM, spacing_mm)
    dense = lung & (hu > CONSOLIDATION_BAND_HU[0])
    solid = _opening(dense, SOLID_OPENING_MM, spacing_mm)
    vessel_zone = _dilate(dense & ~solid, VESSEL_HALO_MM, spacing_mm)
    parenchyma = inner & ~vessel_zone & ~solid
    local = _local_mean(hu, parenchyma, LOCAL_SIGMA_MM, spacing_mm)
    band = lung & (hu >= GGO_BAND_HU[0]) & (hu <= CONSOLIDATION_BAND_HU[1])
    core = _opening(solid, SOLID_CORE_MM, spacing_mm)
    seeds = (band & inner & ~vessel_zone & (local > LOCAL_MEAN_MIN_HU)) | (core & deep)
    p = pieces(seeds)
    if p.n == 0:
        return seeds
    lesions = p.select(p.sizes * spacing_mm**3 >= MIN_LESION_MM3)
    steps = int(round(GROW_MM / spacing_mm))
    if steps > 0 and lesions.any():
        lesions = ndi.binary_dilation(lesions, iterations=steps, mask=band)
    return lesions


def _lesions_on_input_grid(image: sitk.Image, lungs: sitk.Image) -> np.ndarray:
    """uint8 (z, y, x) lesion array on ``image``'s grid, not yet limited to the lungs."""
    work = to_isotropic(image, LESION_SPACING_MM)
    lungs_iso = labels_to_grid(lungs, work)  # named: a view of a temporary image reads freed memory
    lung_iso = sitk.GetArrayViewFromImage(lungs_iso) > 0
    out = np.zeros(lung_iso.shape, dtype=np.uint8)
    if lung_iso.any():
        # Only the lungs' box (plus a margin) is worked on.
        box = ndi.find_objects(lung_iso.astype(np.uint8))[0]
        box = tuple(
            slice(max(0, s.start - _MARGIN_VOXELS), min(n, s.stop + _MARGIN_VOXELS))
            for s, n in zip(box, lung_iso.shape, strict=True)
        )
        hu = sitk.GetArrayViewFromImage(work)[box]
        out[box] = lesion_mask_array(hu, lung_iso[box], LESION_SPACING_MM)
    return sitk.GetArrayFromImage(labels_to_grid(array_to_image(out, work), image))


def find_lesions(image: sitk.Image, lungs: sitk.Image) -> sitk.Image:
    """uint8 0/1 lesion candidates inside ``lungs`` (any non-zero label), vessels suppressed.

    ``image`` is CT in HU; ``lungs`` is a label image on any grid covering it
    (normally ``segment_lungs(image)``). The result is on ``image``'s grid. See
    the module docstring for the rule.
    """
    lesions = _lesions_on_input_grid(image, lungs)
    # Nearest-neighbour resampling can put a lesion voxel just outside the lungs.
    lungs_here = lungs if lungs.IsSameImageGeometryAs(image, 1e-4, 1e-4) else labels_to_grid(lungs, image)
    lesions &= (sitk.GetArrayViewFromImage(lungs_here) > 0).view(np.uint8)
    return array_to_image(lesions, image)


def threshold_labelmap(image: sitk.Image) -> sitk.Image:
    """The ``--method threshold`` result: uint8 1 = left lung, 2 = right lung, 3 = lesion.

    Lesion voxels take label 3 (and leave their lung label), as in every
    labelmap of this project. Raises ``errors.InputError`` if no lungs are found.
    """
    coarse, work = segment_lungs_working(image)
    coarse_image = array_to_image(coarse, work)
    labels = sitk.GetArrayFromImage(labels_to_grid(coarse_image, image))
    # The lesion finder reads the coarse lungs (cheaper than the full-resolution ones, same voxels).
    lesions = _lesions_on_input_grid(image, coarse_image)
    labels[(lesions > 0) & (labels > 0)] = LESION
    return array_to_image(labels, image)
