"""Body outline and the air enclosed by it, on the aligned working grid.

Arrays are (z, y, x) on the grid of ``grid`` (z = superior, so an
axial slice is ``array[z]``). Outside air is every air region that reaches the
border of its axial slice; in an axial slice the lungs are always enclosed by
the chest wall, so air that is not outside is inside the body (lungs, airways,
bowel gas).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from CovidCTAnalysisLib.constants import BODY_THRESHOLD_HU
from CovidCTAnalysisLib.masks import largest_piece

# In-plane (4-)connectivity only: every axial slice is labelled on its own.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


def fill_holes_axial(
    mask: np.ndarray, max_area_voxels: int | None = None, fill_border: np.ndarray | None = None
) -> np.ndarray:
    """Fill holes slice by slice in the axial plane (``array[z]``).

    Labels the background with in-plane connectivity and keeps as background
    only regions that touch the slice border; faster than iterative filling.
    With ``max_area_voxels``, larger holes stay open. ``fill_border`` (bool,
    same shape) marks voxels whose region is filled even if it touches the border.
    """
    labels, n = ndi.label(~mask, structure=_IN_PLANE)
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(edge)] = True
    border[0] = False  # label 0 is the mask itself, which stays
    if fill_border is not None:
        border[np.unique(labels[fill_border])] = False
    if max_area_voxels is not None:
        border |= np.bincount(labels.ravel(), minlength=n + 1) > max_area_voxels
        border[0] = False
    return ~border[labels]


# A slice whose border is almost all patient (tissue or lung, not room air) is a
# crop inside the body: there, air regions at the border that are lung, not room
# air, count as inside.
CROPPED_BORDER_SHARE = 0.9
ROOM_AIR_MAX_HU = -950.0


def _cropped_lung_air(hu: np.ndarray, outside_fov: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Mask of border-touching, lung-density air regions in slices cropped inside the body."""
    room_air = (hu < ROOM_AIR_MAX_HU) | outside_fov
    edges = np.concatenate([room_air[:, 0, :], room_air[:, -1, :], room_air[:, :, 0], room_air[:, :, -1]], axis=1)
    cropped = edges.mean(axis=1) <= 1.0 - CROPPED_BORDER_SHARE
    out = np.zeros(hu.shape, dtype=bool)
    for z in np.nonzero(cropped)[0]:
        labels, n = ndi.label(~tissue[z])
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = ndi.sum_labels(np.ones_like(labels), labels, index)
        gas = ndi.sum_labels(room_air[z], labels, index)
        lung_like = np.zeros(n + 1, dtype=bool)
        lung_like[1:] = gas <= 0.5 * sizes
        out[z] = lung_like[labels]
    return out


def body_and_inside_air(
    hu: np.ndarray, outside_fov: np.ndarray, air_max_hu: float = BODY_THRESHOLD_HU
) -> tuple[np.ndarray, np.ndarray]:
    """Return (body, inside_air) masks.

    ``body`` is the largest connected region denser than ``BODY_THRESHOLD_HU``
    (so the table, separate clothing and noise are dropped) with its axial holes
    filled. ``inside_air`` is the part of ``body`` below ``air_max_hu``: lungs,
    airways and bowel gas, but no air from outside the patient. In slices
    cropped inside the body (see ``CROPPED_BORDER_SHARE``) lung-density regions
    at the border count as inside too.
    """
    dense = (hu > BODY_THRESHOLD_HU) & ~outside_fov
    tissue = largest_piece(dense)
    body = fill_holes_axial(tissue, fill_border=_cropped_lung_air(hu, outside_fov, tissue))
    inside_air = body & (hu < air_max_hu) & ~outside_fov
    return body, inside_air
