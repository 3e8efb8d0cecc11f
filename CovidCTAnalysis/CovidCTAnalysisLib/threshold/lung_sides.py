"""Split a lung mask into the patient's left and right lung.

Works on the aligned working grid of ``grid``: array x increases
towards the patient's left (LPS +x), whatever the input orientation was.

Rule: each connected piece of lung is given to the side of the body's
left-right midline that holds most of it. A piece with a large share on both
sides (lungs touching at the anterior junction, or joined through a bronchus)
is eroded until it falls apart into two pieces on opposite sides, and every
voxel goes to the nearer piece; if erosion does not separate it, each axial
slice is cut at the thinnest lung column near the midline.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from CovidCTAnalysisLib.constants import LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.masks import pieces

# A piece with at least this share of its voxels on the other side of the
# midline is treated as both lungs joined.
STRADDLE_FRACTION = 0.2
MAX_SPLIT_EROSION_MM = 16.0
MIDLINE_SEARCH_MM = 40.0


def _side_of(mask: np.ndarray, midline_x: float) -> float:
    """Share of ``mask`` voxels on the patient's left (x > midline)."""
    xs = np.nonzero(mask.any(axis=(0, 1)))[0]
    counts = mask.sum(axis=(0, 1))[xs]
    return float(counts[xs > midline_x].sum()) / max(float(counts.sum()), 1.0)


def _split_by_erosion(piece: np.ndarray, midline_x: float, spacing_x: float) -> np.ndarray | None:
    """Labels (1 left / 2 right) for ``piece``, or None if erosion never separates it."""
    ball = ndi.generate_binary_structure(3, 1)
    eroded = piece
    steps = max(1, int(MAX_SPLIT_EROSION_MM / spacing_x))
    for _ in range(steps):
        eroded = ndi.binary_erosion(eroded, ball)
        p = pieces(eroded)
        if p.n < 2:
            if p.n == 0:
                return None
            continue
        labels = p.labels
        a, b = np.argsort(p.sizes)[::-1][:2]
        if not p.large(0.1)[b]:
            continue  # a small bit broke off; keep eroding
        left_a = _side_of(labels == a, midline_x) > 0.5
        left_b = _side_of(labels == b, midline_x) > 0.5
        if left_a == left_b:
            continue
        markers = np.zeros(piece.shape, dtype=np.uint8)
        markers[labels == a] = LEFT_LUNG if left_a else RIGHT_LUNG
        markers[labels == b] = LEFT_LUNG if left_b else RIGHT_LUNG
        # Every voxel of the piece goes to the nearest marker.
        _, (iz, iy, ix) = ndi.distance_transform_edt(markers == 0, return_indices=True)
        return np.where(piece, markers[iz, iy, ix], 0).astype(np.uint8)
    return None


def _split_by_midline_cut(piece: np.ndarray, midline_x: float, spacing_x: float) -> np.ndarray:
    """Cut each axial slice at its thinnest lung column near the midline."""
    out = np.zeros(piece.shape, dtype=np.uint8)
    half = int(MIDLINE_SEARCH_MM / spacing_x)
    lo = max(0, int(midline_x) - half)
    hi = min(piece.shape[2], int(midline_x) + half + 1)
    x = np.arange(piece.shape[2])
    for z in np.nonzero(piece.any(axis=(1, 2)))[0]:
        columns = piece[z].sum(axis=0)[lo:hi]
        cut = lo + int(np.argmin(columns)) if hi > lo else int(midline_x)
        left_cols = x > cut
        out[z][piece[z] & left_cols[None, :]] = LEFT_LUNG
        out[z][piece[z] & ~left_cols[None, :]] = RIGHT_LUNG
    return out


def body_midline_x(lung: np.ndarray, body: np.ndarray) -> float:
    """The body's left-right centre (array x) over the slices that hold lung."""
    rows = np.nonzero(lung.any(axis=(1, 2)))[0]
    body_cols = body[rows].any(axis=1)  # (z, x)
    centres = [np.mean(np.nonzero(c)[0][[0, -1]]) for c in body_cols if c.any()]
    return float(np.median(centres)) if centres else lung.shape[2] / 2.0


def split_left_right(lung: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """uint8 (z, y, x) labels: ``LEFT_LUNG`` / ``RIGHT_LUNG`` for every voxel of ``lung``."""
    midline_x = body_midline_x(lung, body)
    out = np.zeros(lung.shape, dtype=np.uint8)
    labels, n = ndi.label(lung)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        piece = labels[sl] == i
        share_left = _side_of(piece, midline_x - sl[2].start)
        if STRADDLE_FRACTION <= share_left <= 1.0 - STRADDLE_FRACTION:
            local_mid = midline_x - sl[2].start
            split = _split_by_erosion(piece, local_mid, spacing[0])
            if split is None:
                split = _split_by_midline_cut(piece, local_mid, spacing[0])
            out[sl][piece] = split[piece]
        else:
            out[sl][piece] = LEFT_LUNG if share_left > 0.5 else RIGHT_LUNG
    return out
