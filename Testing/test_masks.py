"""masks.py: connected pieces (largest, large enough), the left/right swap and the side check by physical centroid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.masks import (
    keep_large_pieces,
    largest_piece,
    lung_centroids_x,
    pieces,
    sides_reversed,
    swap_left_right,
)


def three_pieces() -> np.ndarray:
    m = np.zeros((10, 10, 30), bool)
    m[2:8, 2:8, 0:10] = True  # 360 voxels
    m[2:8, 2:8, 12:16] = True  # 144 (40 %)
    m[4:6, 4:6, 20:22] = True  # 8 (2 %)
    return m


def test_pieces_sizes_and_the_large_rule():
    p = pieces(three_pieces())
    assert p.n == 3 and sorted(p.sizes.tolist()) == [0, 8, 144, 360]
    assert p.large(0.1).sum() == 2 and not p.large(0.1)[0]
    assert p.large(0.5).sum() == 1
    among = p.sizes == 144  # the largest among these is 144: 8 is still below 10 % of it
    assert p.large(0.1, among=among).sum() == 2
    assert p.select(p.large(0.5)).sum() == 360


def test_largest_and_keep_large_pieces():
    m = three_pieces()
    assert largest_piece(m).sum() == 360
    assert keep_large_pieces(m, 0.1).sum() == 504
    assert keep_large_pieces(m, 0.01).sum() == 512
    assert not largest_piece(np.zeros((3, 3, 3), bool)).any()
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # 6-connectivity: two pieces of one voxel
    assert pieces(diagonal).n == 2


def test_swap_left_right_numpy_and_torch_leave_other_labels():
    arr = np.array([0, 1, 2, 3, 1, 2], np.uint8)
    assert swap_left_right(arr.copy()).tolist() == [0, 2, 1, 3, 2, 1]
    t = torch.tensor([0, 1, 2, 3])
    assert swap_left_right(t).tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("flip", [False, True])
def test_sides_by_physical_centroid(flip):
    arr = np.zeros((4, 4, 20), np.uint8)
    arr[:, :, 2:6] = 1
    arr[:, :, 12:18] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 1.0, 1.0))
    img.SetOrigin((100.0, 0.0, 0.0))
    if flip:  # image x runs towards the patient's right: label 1 at low index is on the left
        img.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    x1, x2 = lung_centroids_x(img)
    sign = -1.0 if flip else 1.0
    assert x1 == pytest.approx(100.0 + sign * 2.0 * 3.5) and x2 == pytest.approx(100.0 + sign * 2.0 * 14.5)
    assert (sides_reversed(img) is None) == flip
    arr[arr == 2] = 0
    assert lung_centroids_x(sitk.GetImageFromArray(arr)) is None
