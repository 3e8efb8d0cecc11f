"""The region of interest (ROI) redrawn around clicks, as an index box of the image.

A box of ``roi_mm`` centred on the clicks (grown to hold them all), shifted inwards where it
would cross the image's edge, then clipped: a click near the top of a scan stays inside its
ROI. (MONAI's ``SpatialCropGuidanced`` with a 3-D ``spatial_size`` puts the crop's depth at the
first ``spatial_size[0]`` slices instead, whatever the clicks; ``Testing/test_interactive.py``
shows that trap.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

Box = tuple[int, int, int, int, int, int]  # (x0, y0, z0, x1, y1, z1), end exclusive


def roi_box(image: sitk.Image, points_lps: Sequence[Sequence[float]], roi_mm: Sequence[float],
            margin_mm: float = 0.0) -> Box:
    """Index box of ``image`` covering ``roi_mm`` (x, y, z) around the clicks' centre, holding every click
    with ``margin_mm`` to spare, inside the image."""
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3)
    if not len(pts):
        raise ValueError("roi_box needs at least one point")
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    half = np.maximum(np.asarray(roi_mm, dtype=float) / 2.0, (pts.max(axis=0) - pts.min(axis=0)) / 2.0 + margin_mm)
    corners = [centre + half * np.array([sx, sy, sz]) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    ci = np.array([image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
    size = np.array(image.GetSize())
    clicked = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
    clicked = np.floor(clicked + 0.5).astype(int)
    lo = np.minimum(np.floor(ci.min(axis=0) + 0.5).astype(int), clicked.min(axis=0))
    hi = np.maximum(np.floor(ci.max(axis=0) + 0.5).astype(int), clicked.max(axis=0) + 1)
    # shift inwards (keeps the ROI's size where the image allows), then clip
    over = np.maximum(hi - size, 0)
    lo, hi = lo - over, hi - over
    under = np.maximum(-lo, 0)
    lo, hi = lo + under, hi + under
    lo, hi = np.maximum(lo, 0), np.minimum(hi, size)
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


def crop(image: sitk.Image, box: Box) -> sitk.Image:
    """The box of ``image`` as an image with its physical geometry."""
    x0, y0, z0, x1, y1, z1 = box
    return image[x0:x1, y0:y1, z0:z1]
