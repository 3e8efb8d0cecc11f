"""``preprocessing`` of an interactive (DeepGrow-style) model: what its ``metadata.json`` must say.

The model grid is the segmenter's (``transforms.model_grid``: axis-aligned LPS, ``spacing_mm``)
and the HU scaling too (``hu_range``); the keys of ``transforms.SEGMENTER_DEFAULTS`` apply. Added:

``roi_size``           [x, y, z] voxels at ``spacing_mm``: the region of interest redrawn around a click
                       (and the network's window)
``guidance_sigma_mm``  standard deviation of the Gaussian that turns a click into a guidance map
``channels``           input channels in order: ``["image", "positive", "negative"]``, optionally
                       followed by ``"lesion"`` (the current lesion mask)
"""

from __future__ import annotations

from typing import Any

from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.models.transforms import segmenter_settings

BASE_CHANNELS = ("image", "positive", "negative")
CHANNEL_CHOICES = (list(BASE_CHANNELS), [*BASE_CHANNELS, "lesion"])
INTERACTIVE_DEFAULTS: dict[str, Any] = {
    "guidance_sigma_mm": 5.0,
    "channels": list(BASE_CHANNELS),
}


def interactive_settings(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """Metadata ``preprocessing`` merged over the defaults (segmenter's and ours), checked."""
    p = {**INTERACTIVE_DEFAULTS, **segmenter_settings(preprocessing or {})}
    p.update({k: v for k, v in (preprocessing or {}).items() if k in INTERACTIVE_DEFAULTS})
    try:
        sigma = float(p["guidance_sigma_mm"])
    except (TypeError, ValueError):
        sigma = -1.0
    if not sigma > 0:
        raise ModelError(f"preprocessing.guidance_sigma_mm={p['guidance_sigma_mm']!r}; expected a positive number (mm)")
    if list(p["channels"]) not in CHANNEL_CHOICES:
        raise ModelError(f"preprocessing.channels={p['channels']!r}; expected one of {CHANNEL_CHOICES}")
    p["channels"] = list(p["channels"])
    return p


def sigma_voxels(preprocessing: dict[str, Any]) -> tuple[float, float, float]:
    """The guidance sigma in voxels of the model grid, (z, y, x) like the arrays."""
    p = interactive_settings(preprocessing)
    x, y, z = (float(p["guidance_sigma_mm"]) / float(s) for s in p["spacing_mm"])
    return (z, y, x)
