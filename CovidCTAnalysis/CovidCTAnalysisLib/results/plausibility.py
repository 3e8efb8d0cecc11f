"""Plausibility guard: flags a model result that should not be trusted (report.json ``warnings``).

Three checks, each a sentence with what was seen, in numbers, and what to do:

* **Lesion disagreement**: the segmenter's lesion volume and the threshold
  method's lesion candidates (``threshold.lesions.find_lesions`` on the same
  lungs) differ grossly: the larger is more than ``DISAGREE_FACTOR`` times the
  smaller plus ``DISAGREE_MARGIN_ML``.
* **Class against lesion burden**: "Normal" with at least
  ``NORMAL_MAX_LESION_PCT`` of the lung as lesion; or a confident (p >=
  ``CONFIDENT_P``) "Pneumonia"/"COVID-19" while neither the segmenter nor the
  threshold method sees more than ``DISEASE_MIN_LESION_PCT`` of the lung as lesion.
* **Outside the training distribution**: ``input_profile`` (lung HU
  percentiles 5-75, noise and noise texture; the 95th percentile and lung volume are recorded only) of the scan against the ``input_profile``
  range a model's ``metadata.json`` records for its training images (written
  by ``python -m training.input_profile``); a value beyond the range by more
  than its tolerance (``TOLERANCE``) is flagged. Models without a recorded
  range are not checked (listed in ``ood_unchecked``).

The thresholds are round numbers, chosen so that the guard stays quiet on the
phantoms the demo models do well on; ``benchmarks/eval_plausibility.py``
measures how often each check fires on phantoms and on the real scans.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import CLASS_NAMES, LESION
from CovidCTAnalysisLib.threshold.grid import labels_to_grid

DISAGREE_FACTOR = 3.0
DISAGREE_MARGIN_ML = 100.0
NORMAL_MAX_LESION_PCT = 5.0
CONFIDENT_P = 0.9
DISEASE_MIN_LESION_PCT = 0.1
PERCENTILES = (5, 25, 50, 75, 95)
PROFILE_KEYS = tuple(f"lung_hu_p{p}" for p in PERCENTILES) + ("noise_hu", "noise_texture", "lung_ml")
# The values compared, and how far beyond the training range each may lie: (absolute HU, fraction of the
# range's own width); noise also by half its own size. Recorded, not compared: the 95th percentile (lesions
# move it, and disease is not "unlike training") and lung volume (patients differ two-fold; the models see
# the lung box, not the litres).
TOLERANCE: dict[str, tuple[float, float]] = {
    **{f"lung_hu_p{p}": (40.0, 0.25) for p in PERCENTILES[:-1]},
    "noise_hu": (0.0, 0.5),
    "noise_texture": (0.1, 0.25),
}
MAX_SAMPLES = 2_000_000  # lung voxels used for the percentiles


def _lung_mask(image: sitk.Image, lungs: sitk.Image) -> np.ndarray:
    same = lungs.GetSize() == image.GetSize() and np.allclose(lungs.GetSpacing(), image.GetSpacing())
    return sitk.GetArrayViewFromImage(lungs if same else labels_to_grid(lungs, image)) > 0


def input_profile(image: sitk.Image, lungs: sitk.Image) -> dict[str, float]:
    """What a model sees of this scan: lung HU percentiles, noise (HU), noise texture and lung volume (mL).

    ``lungs``: any label image whose non-zero voxels are lung (the threshold lungs). Noise is
    estimated from differences of in-plane neighbours inside the lung (robust MAD, divided by
    sqrt 2), so vessels and lesions hardly move it; texture is the spread of differences two
    voxels apart over that of neighbours.
    """
    hu = sitk.GetArrayViewFromImage(image)
    lung = _lung_mask(image, lungs)
    values = hu[lung]
    if values.size == 0:
        raise ValueError("input_profile: the lung mask is empty")
    step = max(1, values.size // MAX_SAMPLES)
    pct = np.percentile(values[::step].astype(np.float32), PERCENTILES)
    spread = []
    for lag in (1, 2):
        both = lung[:, :, lag:] & lung[:, :, :-lag]
        diff = (hu[:, :, lag:].astype(np.float32) - hu[:, :, :-lag])[both][::step]
        spread.append(1.4826 * float(np.median(np.abs(diff - np.median(diff)))) if diff.size else 0.0)
    out = {f"lung_hu_p{p}": round(float(v), 1) for p, v in zip(PERCENTILES, pct, strict=True)}
    out["noise_hu"] = round(float(spread[0] / np.sqrt(2.0)), 1)
    # Texture: 1.0 for white noise, more when the kernel correlates neighbouring voxels (real CT ~1.35-1.5,
    # the phantoms 1.33-1.5 since generator version 9, ~1.1 before; benchmarks/eval_phantom_realism.py).
    out["noise_texture"] = round(float(spread[1] / max(spread[0], 1e-6)), 3)
    out["lung_ml"] = round(float(lung.sum()) * float(np.prod(image.GetSpacing())) / 1000.0, 1)
    return out


def profile_range(profiles: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """The range of each profile value over training images: {key: {"min", "max", "n"}}."""
    if not profiles:
        raise ValueError("profile_range: no profiles given")
    return {k: {"min": min(p[k] for p in profiles), "max": max(p[k] for p in profiles), "n": len(profiles)}
            for k in PROFILE_KEYS}


def out_of_distribution(profile: dict[str, float], seen: dict[str, Any], model_id: str) -> str | None:
    """A warning when ``profile`` lies outside a model's recorded training range ``seen``, else None."""
    parts = []
    for key in TOLERANCE:
        rng = seen.get(key)
        if not isinstance(rng, dict) or key not in profile:
            continue
        lo, hi = float(rng["min"]), float(rng["max"])
        absolute, fraction = TOLERANCE[key]
        slack = max(absolute, fraction * (hi - lo), fraction * max(abs(lo), abs(hi)) if key == "noise_hu" else 0.0)
        value = float(profile[key])
        if value < lo - slack or value > hi + slack:
            parts.append(f"{key} {value:g} (training {lo:g} to {hi:g})")
    if not parts:
        return None
    return (f"input outside the training data of {model_id}: " + "; ".join(parts) +
            ". The model has not seen scans like this one; treat its result as unreliable and check it "
            "against the images (or use --method threshold).")


def lesion_disagreement(model_ml: float, threshold_ml: float) -> str | None:
    """A warning when the segmenter's and the threshold method's lesion volumes differ grossly."""
    small, large = sorted((model_ml, threshold_ml))
    if large <= DISAGREE_FACTOR * small + DISAGREE_MARGIN_ML:
        return None
    return (f"lesion volume: the segmenter found {model_ml:.0f} mL, the threshold method {threshold_ml:.0f} mL of "
            f"lesion candidates (more than {DISAGREE_FACTOR:g}x + {DISAGREE_MARGIN_ML:.0f} mL apart). Review the "
            "lesion outline slice by slice before using the lesion volume or percent.")


def class_burden_conflict(label: str, probability: float, lesion_pcts: dict[str, float]) -> str | None:
    """A warning when the class contradicts the lesion burden (``lesion_pcts``: method -> % of lung)."""
    if not lesion_pcts:
        return None
    seen = ", ".join(f"{pct:.1f} % by the {name}" for name, pct in lesion_pcts.items())
    if label == CLASS_NAMES[0] and max(lesion_pcts.values()) >= NORMAL_MAX_LESION_PCT:
        return (f"class against lesion burden: classified {label} (p = {probability:.2f}) but lesion covers {seen} "
                f"of the lung (Normal should show under {NORMAL_MAX_LESION_PCT:g} %). Do not rely on the class; "
                "review the images.")
    if label != CLASS_NAMES[0] and probability >= CONFIDENT_P and max(lesion_pcts.values()) < DISEASE_MIN_LESION_PCT:
        return (f"class against lesion burden: classified {label} with p = {probability:.2f} but lesion covers only "
                f"{seen} of the lung (under {DISEASE_MIN_LESION_PCT:g} %). A confident disease call without visible "
                "lesion is suspect; review the images.")
    return None


def lesion_ml(labels: sitk.Image, value: int = LESION) -> float:
    """Volume (mL) of the voxels labelled ``value`` (a labelmap's lesion label 3; 1 for a 0/1 lesion mask)."""
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(labels) == value))
    return count * float(np.prod(labels.GetSpacing())) / 1000.0


def check_model_result(image: sitk.Image, lungs: sitk.Image, *, label: str | None, probability: float | None,
                       labelmap: sitk.Image | None, model_profiles: dict[str, dict | None]) -> dict[str, Any]:
    """Run every check on a model-path result; returns {"warnings": [...], "profile": ..., ...}.

    ``lungs``: the threshold lungs; ``labelmap``: the segmenter's (None if it did not run);
    ``model_profiles``: model id -> its recorded ``input_profile`` range (None when it has none).
    """
    from CovidCTAnalysisLib.threshold.lesions import find_lesions

    warnings: list[str] = []
    profile = input_profile(image, lungs)
    lung_ml = max(profile["lung_ml"], 1e-6)
    threshold_ml = lesion_ml(find_lesions(image, lungs), value=1)  # a 0/1 mask
    pcts = {"threshold method": 100.0 * threshold_ml / lung_ml}
    if labelmap is not None:
        seg_ml = lesion_ml(labelmap)
        seg_lung_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(labelmap)) * np.prod(labelmap.GetSpacing()))
        pcts = {"segmenter": 100.0 * seg_ml / max(seg_lung_ml / 1000.0, 1e-6), **pcts}
        warnings.append(lesion_disagreement(seg_ml, threshold_ml))
    if label is not None and probability is not None:
        warnings.append(class_burden_conflict(label, probability, pcts))
    unchecked = []
    for model_id, seen in model_profiles.items():
        if seen:
            warnings.append(out_of_distribution(profile, seen, model_id))
        else:
            unchecked.append(model_id)
    return {"warnings": [w for w in warnings if w], "profile": profile, "threshold_lesion_ml": round(threshold_ml, 1),
            "lesion_pct": {k: round(float(v), 2) for k, v in pcts.items()}, "ood_unchecked": unchecked}
