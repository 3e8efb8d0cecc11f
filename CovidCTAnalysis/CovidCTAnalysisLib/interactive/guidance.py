"""Clicks → Gaussian guidance maps on the model grid, and the network's input.

The maps are MONAI's (``monai.apps.deepgrow.transforms.AddGuidanceSignald``: a Gaussian per
click, each map scaled to a peak of 1). Two of its habits are handled here: it truncates
coordinates (we round to the nearest voxel first) and it clamps a point outside the array onto
its border (we drop clicks outside the ROI instead, so a far click never shows up at the edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.models.interactive_settings import interactive_settings, sigma_voxels


def grid_index(grid: sitk.Image, lps) -> tuple[int, int, int]:
    """The (z, y, x) array index of the model-grid voxel nearest to an LPS point (may lie outside)."""
    ci = grid.TransformPhysicalPointToContinuousIndex([float(v) for v in lps])
    x, y, z = (int(np.floor(c + 0.5)) for c in ci)
    return (z, y, x)


def inside(index: Sequence[int], shape: Sequence[int]) -> bool:
    return all(0 <= int(i) < int(s) for i, s in zip(index, shape, strict=True))


def guidance_maps(shape_zyx: Sequence[int], positive: Sequence[Sequence[int]], negative: Sequence[Sequence[int]],
                  sigma_zyx: Sequence[float]) -> np.ndarray:
    """(2, z, y, x) float32: positive and negative guidance for (z, y, x) voxel indices; indices outside
    ``shape_zyx`` are left out (not clamped)."""
    from monai.apps.deepgrow.transforms import AddGuidanceSignald

    pos = [[int(v) for v in p] for p in positive if inside(p, shape_zyx)]
    neg = [[int(v) for v in p] for p in negative if inside(p, shape_zyx)]
    placeholder = np.zeros((1, *shape_zyx), dtype=np.float32)
    out = AddGuidanceSignald(sigma=list(sigma_zyx))({"image": placeholder, "guidance": [pos, neg]})
    return np.asarray(out["image"][1:], dtype=np.float32)


def network_input(image01: np.ndarray, positive: Sequence[Sequence[int]], negative: Sequence[Sequence[int]],
                  preprocessing: dict, lesion: np.ndarray | None = None) -> np.ndarray:
    """(C, z, y, x) float32 in the metadata's channel order: the scaled image (z, y, x), the guidance of
    the (z, y, x) click indices and, for a 4-channel model, the current lesion mask."""
    p = interactive_settings(preprocessing)
    chans = [np.asarray(image01, dtype=np.float32)[None],
             guidance_maps(image01.shape, positive, negative, sigma_voxels(p))]
    if "lesion" in p["channels"]:
        if lesion is None:
            raise ValueError("this model takes the current lesion mask as a channel; pass lesion=")
        chans.append(np.asarray(lesion, dtype=np.float32)[None])
    return np.concatenate(chans, axis=0)
