"""Direction matrices for tests: signed axis permutations and rotations (columns = image axes in LPS)."""

from __future__ import annotations

import numpy as np


def signed_permutation(perm, signs) -> np.ndarray:
    """Image axis j runs along LPS axis ``perm[j]`` with sign ``signs[j]``."""
    d = np.zeros((3, 3))
    for j, (k, s) in enumerate(zip(perm, signs, strict=True)):
        d[k, j] = s
    return d


def rotation(axis: int, degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` about LPS axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r
