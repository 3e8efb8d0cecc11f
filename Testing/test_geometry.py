"""geometry.py: patient axes of any direction matrix, the one grid corner convention, bounding boxes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.geometry import (
    aligned_grid,
    bounding_box,
    is_axis_aligned,
    patient_axes,
    voxel_box,
)
from orientations import rotation, signed_permutation


def image(size=(6, 5, 4), spacing=(0.7, 1.1, 2.5), origin=(-10.0, 20.0, 5.0), direction=None) -> sitk.Image:
    img = sitk.Image(list(size), sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(float(v) for v in np.asarray(np.eye(3) if direction is None else direction).ravel()))
    return img


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (1, -1, 1)])
def test_patient_axes_of_every_signed_permutation(perm, signs):
    axes = patient_axes(signed_permutation(perm, signs))
    assert axes.lps_of_index == perm and axes.sign == tuple(float(s) for s in signs)
    for j, k in enumerate(perm):
        assert axes.index_axis_along(k) == j
        assert axes.numpy_axis_along(k) == (2 - j, float(signs[j]))


def test_tilted_directions_keep_their_nearest_axes_and_stay_one_to_one():
    base = signed_permutation((1, 0, 2), (1, -1, 1))  # image x along P, image y along -L (right)
    for axis, deg in ((0, 20.0), (1, -30.0), (2, 44.0)):
        assert patient_axes(rotation(axis, deg) @ base) == patient_axes(base)
    # a strongly oblique rotation: each column's largest entry pairs image x and y with LPS x; the
    # pairing must still be one-to-one: the largest total, image x -> -S, y -> -L, z -> +P
    d = np.array([[0.706, -0.702, -0.091], [-0.192, -0.313, 0.93], [-0.682, -0.639, -0.356]])
    assert list(np.argmax(np.abs(d), axis=0)) == [0, 0, 1]
    assert patient_axes(d).lps_of_index == (2, 0, 1) and patient_axes(d).sign == (-1.0, -1.0, 1.0)


def test_patient_axes_accepts_images_tuples_and_matrices():
    d = signed_permutation((2, 0, 1), (1, 1, -1))
    assert patient_axes(image(direction=d)) == patient_axes(tuple(d.ravel())) == patient_axes(d)
    assert is_axis_aligned(d) and not is_axis_aligned(rotation(2, 10) @ d)


def test_voxel_box_is_the_outer_edges_of_the_voxels():
    img = image(direction=signed_permutation((0, 1, 2), (-1, 1, 1)))
    lo, hi = voxel_box(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    assert np.allclose(lo, [-10.0 - 5.5 * 0.7, 20.0 - 0.55, 5.0 - 1.25])
    assert np.allclose(hi, [-10.0 + 0.35, 20.0 + 4.5 * 1.1, 5.0 + 3.5 * 2.5])


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_native_aligned_grid_of_a_permuted_image_has_the_same_voxel_centres(perm):
    img = image(direction=signed_permutation(perm, (1, -1, -1)))
    grid = aligned_grid(img)
    assert sorted(grid.reference().GetSize()) == sorted(img.GetSize())
    centres = {tuple(np.round(img.TransformIndexToPhysicalPoint(ix), 6))
               for ix in itertools.product(*[range(n) for n in img.GetSize()])}
    ref = grid.reference()
    assert ref.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    grid_centres = {tuple(np.round(ref.TransformIndexToPhysicalPoint(ix), 6))
                    for ix in itertools.product(*[range(n) for n in ref.GetSize()])}
    assert grid_centres == centres


def test_grid_corner_convention_first_edge_on_the_box_and_rounded_size():
    img = image(size=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))  # box -0.5 .. 9.5
    g = aligned_grid(img, 3.0)
    assert g.size == (3, 3, 3)  # 10 / 3 = 3.33 -> 3
    assert np.allclose(g.origin, -0.5 + 1.5)  # first voxel's outer edge on the box's low corner
    assert np.allclose(g.centres(0), [1.0, 4.0, 7.0])
    g = aligned_grid(img, 4.0, margin_mm=1.0)  # box -1.5 .. 10.5: 12 / 4 = 3
    assert g.size == (3, 3, 3) and np.allclose(g.origin, -1.5 + 2.0)
    assert aligned_grid(img, 100.0).size == (1, 1, 1)
    g = aligned_grid(geometry=(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()), spacing=(1, 2, 5))
    assert g.size == (10, 5, 2) and np.allclose(g.spacing, (1, 2, 5))


def test_aligned_grid_of_a_tilted_image_covers_all_its_voxels():
    img = image(direction=rotation(2, 30.0) @ rotation(0, 10.0))
    ref = aligned_grid(img, 0.5).reference()
    for ix in itertools.product(*[(0, n - 1) for n in img.GetSize()]):
        ci = np.array(ref.TransformPhysicalPointToContinuousIndex(img.TransformIndexToPhysicalPoint(ix)))
        assert np.all(ci >= -0.5) and np.all(ci <= np.array(ref.GetSize()) - 0.5)


def test_bounding_box_with_padding_clipped_and_empty():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 4, 3] = True
    assert bounding_box(mask) == (slice(1, 4), slice(2, 5), slice(3, 4))
    assert bounding_box(mask, pad=2) == (slice(0, 5), slice(0, 6), slice(1, 6))
    assert bounding_box(mask, pad=(0, 1, 0)) == (slice(1, 4), slice(1, 6), slice(3, 4))
    assert bounding_box(np.zeros((3, 3), bool)) is None
    assert bounding_box(np.eye(4, dtype=bool)[1:3]) == (slice(0, 2), slice(1, 3))
