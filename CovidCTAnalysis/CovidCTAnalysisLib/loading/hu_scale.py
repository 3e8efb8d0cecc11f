"""Stored values that are not Hounsfield units: correct the one unambiguous case, refuse the others.

Every chest CT in HU holds air: outside the body (-1000), in the trachea and in aerated lung (-950 to
-700). A volume with (almost) no voxel in the air/lung band -1100 to -400 HU is not in HU, or shows no
aerated lung at all; either way its HU-based results would be silently wrong. Three cases:

- Raw stored values with the rescale lost (``RescaleIntercept`` -1024 dropped by a converter): air sits
  near 0 and water/soft tissue near 1024-1064. When the air/lung band shows up shifted by +1024 AND the
  soft-tissue peak sits where +1024 puts it, the evidence is unambiguous: we subtract 1024 and say so
  (log and ``report.json`` ``input.notes``). -1024 is the intercept nearly every CT vendor stores; a
  scanner using -1000 would leave a 24 HU offset, far less than the band limits used here.
- An 8-bit windowed export (PNG/JPEG stacks, Radiopaedia-style cases; values 0-255): refused. The window
  is unknown and everything outside it is clipped, so HU cannot be recovered.
- Anything else without air (values normalised to 0-1, other offsets): refused, naming the range found.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.errors import InputError

AIR_LUNG_BAND_HU = (-1100.0, -400.0)
LOST_INTERCEPT = 1024.0
SOFT_TISSUE_PEAK_HU = (-60.0, 120.0)  # where fat/muscle/blood/water put the main body peak
MIN_AIR_FRACTION = 0.02  # a chest CT has far more (lungs alone are ~15-30 % of a chest scan)
SAMPLE_VOXELS = 2_000_000  # enough for fractions and a peak; keeps the check cheap on big scans


def _sample(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(image)
    step = max(1, int(np.ceil((arr.size / SAMPLE_VOXELS) ** (1 / 3))))
    return np.asarray(arr[::step, ::step, ::step], dtype=np.float32).ravel()


def _fraction_in(values: np.ndarray, band: tuple[float, float], shift: float = 0.0) -> float:
    lo, hi = band[0] + shift, band[1] + shift
    return float(np.count_nonzero((values >= lo) & (values <= hi))) / max(values.size, 1)


def _soft_tissue_peak(values: np.ndarray, shift: float) -> float | None:
    """Centre of the most populated 10-unit bin in -200..300 HU (+ ``shift``); None if that range is empty."""
    lo, hi = -200.0 + shift, 300.0 + shift
    inside = values[(values >= lo) & (values < hi)]
    if inside.size < 0.01 * values.size:
        return None
    counts, edges = np.histogram(inside, bins=50, range=(lo, hi))
    k = int(np.argmax(counts))
    return float(edges[k] + edges[k + 1]) / 2


def _lost_intercept_evidence(values: np.ndarray) -> float | None:
    """The soft-tissue peak (in shifted units) when the scan looks like HU + 1024, else None."""
    if _fraction_in(values, AIR_LUNG_BAND_HU, LOST_INTERCEPT) < MIN_AIR_FRACTION:
        return None
    peak = _soft_tissue_peak(values, LOST_INTERCEPT)
    lo, hi = (v + LOST_INTERCEPT for v in SOFT_TISSUE_PEAK_HU)
    return peak if peak is not None and lo <= peak <= hi else None


def _shifted(image: sitk.Image) -> sitk.Image:
    """``image`` - 1024 as int16 when integer values allow it (no copy wider than int16), else float32."""
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(arr.max())
    if np.issubdtype(arr.dtype, np.integer) and hi <= 32767 and lo - LOST_INTERCEPT >= -32768:
        out = arr.astype(np.int16)
        out -= np.int16(LOST_INTERCEPT)
    else:
        out = arr.astype(np.float32)
        out -= np.float32(LOST_INTERCEPT)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def to_hounsfield(image: sitk.Image, where: str = "image",
                  eight_bit_window: tuple[float, float] | None = None) -> tuple[sitk.Image, str | None]:
    """``(image in HU, note or None)``; raises :class:`InputError` when the values are not HU and cannot be
    made so without guessing. The note, when given, says what was corrected and on what evidence.
    ``eight_bit_window``: the caller knows the 0-255 values are this HU window (a dataset's documented export);
    such values are mapped back linearly instead of refused."""
    values = _sample(image)
    if _fraction_in(values, AIR_LUNG_BAND_HU) >= MIN_AIR_FRACTION:
        return image, None
    lo, hi = float(values.min()), float(values.max())
    air_pct = 100 * _fraction_in(values, AIR_LUNG_BAND_HU)
    band = f"{AIR_LUNG_BAND_HU[0]:g}…{AIR_LUNG_BAND_HU[1]:g} HU"
    if eight_bit_window is not None and lo >= 0 and hi <= 255:
        w_lo, w_hi = eight_bit_window
        hu = sitk.Cast(image, sitk.sitkFloat32) * ((w_hi - w_lo) / 255.0) + w_lo
        return hu, (f"stored values {lo:g}…{hi:g} are an 8-bit export of the HU window {w_lo:g}…{w_hi:g} (given by the "
                    "caller); mapped back to HU linearly (values outside that window were clipped by the export)")
    if lo >= 0 and 1.0 < hi <= 255:
        raise InputError(
            f"{where} holds values {lo:g}…{hi:g} and no air ({air_pct:.1f} % of voxels in {band}): an 8-bit windowed "
            "export (PNG/JPEG slices), not Hounsfield units. Its window is unknown and values outside it are clipped, "
            "so HU cannot be recovered; use the original DICOM series or a NIfTI converted from it (dcm2niix)")
    peak = _lost_intercept_evidence(values)
    if peak is not None:
        shifted_air = 100 * _fraction_in(values, AIR_LUNG_BAND_HU, LOST_INTERCEPT)
        note = (f"stored values are not HU: no air in {band} but {shifted_air:.0f} % of voxels 1024 higher, and the "
                f"soft-tissue peak at {peak:.0f} (= {peak - LOST_INTERCEPT:.0f} HU after -1024): read as raw values "
                "whose rescale intercept (-1024) was lost; 1024 was subtracted from every voxel")
        return _shifted(image), note
    if hi <= 1.0 and lo >= -1.0:
        what = "intensities normalised to [0, 1] or [-1, 1]"
    else:
        what = "no aerated lung or air at all, or values with an unknown offset or scale"
    raise InputError(
        f"{where} holds values {lo:g}…{hi:g} with {air_pct:.2f} % of voxels in the air/lung band {band} (a chest CT "
        f"in HU has well over {100 * MIN_AIR_FRACTION:g} %): {what}; expected Hounsfield units "
        "(air -1000, water 0). Re-export the scan with its rescale slope/intercept applied")
