"""Lesion edges at the half-way HU: the segmenter's lesion outlines moved onto the image's own edge.

The networks run on 2.5 mm voxels, and their lesion outlines err by about one native voxel all round: on
unseen COVID-19 phantoms 80-95 % of the demo segmenter's lesion error lay in the one-voxel shell around the
true outline, spread over 100-200 pieces per case, which no number of clicks could reach one by one. A lesion's
edge is where its density gives way to the lung's, so within ``band_mm`` of each lesion piece's outline a lung
or lesion voxel is lesion when its HU lies above the half-way value between the piece (median HU of its core,
the voxels deeper than ``band_mm`` inside) and the aerated lung around it (median HU of the lung in a ring just
beyond the band): the half-maximum rule of nodule volumetry. Only the edge moves: the core keeps its label, only
lung voxels (labels 1 and 2) can become lesion, and a voxel that stops being lesion goes back to its nearest
lung side. Left as they are: a piece without a core of ``MIN_CORE_VOXELS`` (thinner than twice the band: on a
real normal CT these crumbs were vessel cross-sections, and grew 3-10 fold along the vessels), a piece whose core
is not denser than the lung around it by ``MIN_CONTRAST_HU`` (no edge to find), and new bits not connected to
what stayed of the piece.

Measured on unseen phantoms (seeds 100-104, demo segmenter of 2026-12-03, started from the true lungs): lesion
Dice of COVID-19 phantoms 0.845 -> 0.918 and of pneumonia phantoms 0.769 -> 0.856 with a 4 mm band (3 mm: 0.909
/ 0.837; smoothing the HU first made no difference). On the real CTs (demo models trained on all three
patients), lesion % of lung: P001 3.6 -> 3.3, cap001 3.3 -> 3.6, normal001 1.2 -> 1.4; normal001's lesion-slice
specificity 0.60 -> 0.58 (snapping the crumbs as well: 1.7 % and 0.47).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.masks import nearest_lung_side, pieces

BAND_MM = 4.0
MIN_CONTRAST_HU = 100.0  # a piece less dense than this above its lung has no edge to snap to
MIN_CORE_VOXELS = 20  # a piece with fewer core voxels than this is a crumb, left as it is
MIN_RING_VOXELS = 20  # fewer lung voxels around it than this: the lung HU of the whole labelmap


def snap_lesion_edges(labels: np.ndarray, hu: np.ndarray, spacing_zyx, band_mm: float = BAND_MM,
                      only_near: np.ndarray | None = None, allowed: np.ndarray | None = None) -> tuple[int, int]:
    """Move each lesion piece's edge of ``labels`` (uint8 (z, y, x), 1/2/3) onto the half-way HU of ``hu`` (same
    grid), **in place** (module doc); returns (voxels added, voxels removed). ``only_near`` (bool, same grid):
    only the pieces that hold one of its voxels (a click's change), or all pieces when None. ``allowed`` (bool,
    same grid): where lesion may be added (post-processing passes the rib cage), or anywhere in the lungs."""
    for name, mask in (("only_near", only_near), ("allowed", allowed)):
        if mask is not None and mask.shape != labels.shape:
            raise ValueError(f"{name} of shape {mask.shape}; expected the labels' grid {labels.shape}")
    if labels.shape != hu.shape:
        raise ValueError(f"labels of shape {labels.shape} and HU of shape {hu.shape}; expected the same grid")
    spacing = tuple(float(s) for s in spacing_zyx)
    lesion = pieces(labels == LESION)
    if lesion.n == 0:
        return 0, 0
    lung_hu_all: list[float | None] = []  # the whole labelmap's lung HU, computed once if a piece needs it
    pad = [int(np.ceil(2 * band_mm / s)) + 1 for s in spacing]
    added = removed = 0
    chosen = None
    if only_near is not None:
        chosen = np.zeros(lesion.n + 1, dtype=bool)
        chosen[np.unique(lesion.labels[only_near])] = True
    for k, sl in enumerate(ndi.find_objects(lesion.labels), start=1):
        if sl is None or (chosen is not None and not chosen[k]):
            continue
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(sl, pad, labels.shape, strict=True))
        sub, h = labels[box], hu[box]
        own = lesion.labels[box] == k
        lung = (sub == LEFT_LUNG) | (sub == RIGHT_LUNG)
        depth_in = ndi.distance_transform_edt(own, sampling=spacing)
        depth_out = ndi.distance_transform_edt(~own, sampling=spacing)
        core = own & (depth_in > band_mm)
        if core.sum() < MIN_CORE_VOXELS:
            continue
        lesion_hu = float(np.median(h[core]))
        ring = lung & (depth_out > band_mm)
        if ring.sum() >= MIN_RING_VOXELS:
            lung_hu = float(np.median(h[ring]))
        else:
            if not lung_hu_all:
                lung_all = (labels == LEFT_LUNG) | (labels == RIGHT_LUNG)
                lung_hu_all.append(float(np.median(hu[lung_all])) if lung_all.any() else None)
            lung_hu = lung_hu_all[0]
        if lung_hu is None or lesion_hu - lung_hu < MIN_CONTRAST_HU:
            continue
        half_way = (lesion_hu + lung_hu) / 2.0
        band = (own & (depth_in <= band_mm)) | (lung & (depth_out <= band_mm))
        new = (own & ~band) | (band & (h > half_way))
        kept = pieces(new)
        touching = np.zeros(kept.n + 1, dtype=bool)
        touching[np.unique(kept.labels[new & own])] = True
        touching[0] = False
        new = kept.select(touching)
        add, drop = new & lung, own & ~new
        if allowed is not None:
            add &= allowed[box]
        if drop.any():
            sub[drop] = nearest_lung_side(labels, _xyz_box(box), drop)
        sub[add] = LESION
        added, removed = added + int(add.sum()), removed + int(drop.sum())
    return added, removed


def _xyz_box(box: tuple[slice, slice, slice]) -> tuple[int, int, int, int, int, int]:
    z, y, x = box
    return x.start, y.start, z.start, x.stop, y.stop, z.stop
