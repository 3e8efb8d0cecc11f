"""Lesion edges at the half-way HU (``inference.lesion_edges``): a network outline too small or too large moves
onto the image's edge; crumbs, faint pieces, the core and everything that is not lung stay as they were."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.inference.lesion_edges import snap_lesion_edges
from CovidCTAnalysisLib.inference.postprocess import postprocess_with_notes

SPACING = (2.0, 1.0, 1.0)  # (z, y, x) mm
SHAPE = (30, 80, 120)
LUNG_HU, LESION_HU = -850.0, -450.0


def _radius_mm(centre_zyx) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=float)
    return np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre_zyx, SPACING, strict=True)))


def _scene(seed: int = 0, radius: float = 12.0, lesion_hu: float = LESION_HU):
    """Two lungs (left x >= 60, right x < 60; body wall outside rows 10-70) with a ground-glass ball in the
    left lung whose HU blends over 4 mm, its truth inside the half-way edge (as the phantoms paint it)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 10:70, 60:115] = LEFT_LUNG
    labels[:, 10:70, 5:60] = RIGHT_LUNG
    centre = (15, 40, 85)
    rho = _radius_mm(centre)
    weight = np.clip((radius + 2.0 - rho) / 4.0, 0.0, 1.0)
    hu = np.where(labels > 0, LUNG_HU, 40.0) + rng.normal(0.0, 20.0, SHAPE)
    lung = labels > 0
    hu[lung] += ((lesion_hu - LUNG_HU) * weight)[lung]
    truth = lung & (rho < radius)
    return labels, hu.astype(np.float32), truth, rho


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("drawn_radius", [9.0, 15.0])
def test_an_outline_too_small_or_too_large_moves_onto_the_half_way_edge(drawn_radius):
    labels, hu, truth, rho = _scene()
    labels[(rho < drawn_radius) & (labels > 0)] = LESION
    before = _dice(labels == LESION, truth)
    core = labels == LESION
    core &= rho < drawn_radius - 4.5  # deeper than the 4 mm band
    added, removed = snap_lesion_edges(labels, hu, SPACING)
    after = _dice(labels == LESION, truth)
    assert before < 0.8 and after > 0.95, (before, after)
    assert (added > 0) == (drawn_radius < 12.0) and (removed > 0) == (drawn_radius > 12.0)
    assert (labels[core] == LESION).all()  # the core keeps its label
    if drawn_radius > 12.0:  # voxels given back go to their own (left) lung, never the other side
        freed = (rho < drawn_radius) & ~(labels == LESION) & (rho < 20.0)
        assert (labels[freed] == LEFT_LUNG).all()


def test_only_lung_becomes_lesion_and_the_rest_keeps_its_value():
    labels, hu, truth, rho = _scene(radius=14.0)
    labels[:, 40:, :] = np.where(labels[:, 40:, :] > 0, 0, labels[:, 40:, :])  # cut the lung: body from row 40 on
    hu[:, 40:, :] = 60.0  # dense body tissue right against the lesion: above any half-way HU
    labels[(rho < 10.0) & (labels > 0)] = LESION
    original = labels.copy()
    snap_lesion_edges(labels, hu, SPACING)
    changed = labels != original
    assert changed.any()
    assert np.isin(original[changed], (LEFT_LUNG, RIGHT_LUNG, LESION)).all()
    assert np.isin(labels[changed], (LEFT_LUNG, RIGHT_LUNG, LESION)).all()
    assert (labels[:, 40:, :] == 0).all()  # the body never becomes lesion


def test_crumbs_and_faint_pieces_are_left_as_they_are():
    labels, hu, _, _ = _scene()
    # a vessel crumb: a 2 mm thick dense rod, its network "lesion" one voxel short of it
    hu[10:14, 20, 30:50] = 40.0
    labels[11:13, 20, 32:48] = LESION
    # a faint piece: a ball only 50 HU denser than the lung around it
    faint_rho = _radius_mm((15, 40, 30))
    hu[faint_rho < 10.0] = LUNG_HU + 50.0
    labels[(faint_rho < 8.0) & (labels > 0)] = LESION
    original = labels.copy()
    assert snap_lesion_edges(labels, hu, SPACING) == (0, 0)
    assert np.array_equal(labels, original)


def test_only_the_pieces_near_a_change_move():
    labels, hu, truth, rho = _scene()
    labels[(rho < 9.0) & (labels > 0)] = LESION  # the left ball, drawn too small
    other = _radius_mm((15, 40, 30))
    hu[other < 12.0] = LESION_HU
    labels[(other < 8.0) & (labels > 0)] = LESION  # a right ball, also too small
    near = np.zeros(SHAPE, bool)
    near[15, 40, 30] = True  # a change inside the right ball only
    original = labels.copy()
    added, _ = snap_lesion_edges(labels, hu, SPACING, only_near=near)
    assert added > 0
    assert np.array_equal(labels[:, :, 60:], original[:, :, 60:])  # the left ball did not move
    assert (labels[:, :, :60] == LESION).sum() > (original[:, :, :60] == LESION).sum()


def test_lesion_grows_only_where_allowed():
    # post-processing passes the rib cage: an edge must not carry lesion back out of it
    labels, hu, _, rho = _scene()
    labels[(rho < 9.0) & (labels > 0)] = LESION
    original = labels.copy()
    allowed = np.zeros(SHAPE, bool)
    allowed[:, :, :85] = True  # the ball's centre column is x 85: only its low-x half may grow
    added, _ = snap_lesion_edges(labels, hu, SPACING, allowed=allowed)
    grown = (labels == LESION) & (original != LESION)
    assert added > 0 and grown.any() and not grown[:, :, 85:].any()


def test_grids_that_differ_are_refused():
    labels, hu, _, _ = _scene()
    with pytest.raises(ValueError, match="same grid"):
        snap_lesion_edges(labels, hu[:-1], SPACING)
    with pytest.raises(ValueError, match="only_near"):
        snap_lesion_edges(labels, hu, SPACING, only_near=np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="allowed"):
        snap_lesion_edges(labels, hu, SPACING, allowed=np.zeros((2, 2, 2), bool))


def test_postprocessing_snaps_the_edges_when_given_the_image_and_says_so():
    labels, hu, truth, rho = _scene()
    labels[(rho < 9.0) & (labels > 0)] = LESION
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(SPACING[::-1])
    plain, plain_notes = postprocess_with_notes(image)
    snapped, notes = postprocess_with_notes(image, hu=hu)
    assert not any("lesion edges" in n for n in plain_notes)
    assert any("lesion edges moved" in n for n in notes), notes
    before = _dice(sitk.GetArrayFromImage(plain) == LESION, truth)
    after = _dice(sitk.GetArrayFromImage(snapped) == LESION, truth)
    assert after > before + 0.1
    with pytest.raises(ValueError, match="HU array"):
        postprocess_with_notes(image, hu=hu[:, :-1])
