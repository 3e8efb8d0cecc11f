"""The simulated user of training and of the robot evaluation.

It clicks the centre of the largest error region: the largest connected false-negative region
gets a positive click, the largest false-positive region a negative one, whichever is larger.
"Centre" is the voxel deepest inside the region (largest distance to its border), so the click
always lands in the region, also for a crescent. The error masks come from MONAI's DeepGrow
``FindDiscrepancyRegionsd.disparity``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from CovidCTAnalysisLib.masks import pieces


def largest_region_centre(mask: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[tuple[int, ...], int]:
    """(centre index, voxel count) of the largest connected region of ``mask``; ((), 0) when empty."""
    p = pieces(mask)
    if p.n == 0:
        return (), 0
    k = int(np.argmax(p.sizes))
    sl = ndimage.find_objects(p.labels)[k - 1]
    region = np.pad(p.labels[sl] == k, 1)  # padded so the region's border counts as outside
    depth = ndimage.distance_transform_edt(region, sampling=spacing_zyx)
    c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(int(s.start) + int(i) - 1 for s, i in zip(sl, c, strict=True)), int(p.sizes[k])


def next_click(prediction: np.ndarray, truth: np.ndarray,
               spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[bool, tuple[int, ...]] | None:
    """(positive?, (z, y, x)) at the centre of the largest error region, or None when there is no error."""
    from monai.apps.deepgrow.transforms import FindDiscrepancyRegionsd

    fn, fp = FindDiscrepancyRegionsd.disparity(np.asarray(truth, np.float32), np.asarray(prediction, np.float32))
    pos, n_pos = largest_region_centre(fn > 0, spacing_zyx)
    neg, n_neg = largest_region_centre(fp > 0, spacing_zyx)
    if n_pos == 0 and n_neg == 0:
        return None
    return (True, pos) if n_pos >= n_neg else (False, neg)
