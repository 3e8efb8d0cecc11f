"""Dense (consolidated) lung out to the chest wall joins the threshold lungs (``threshold/dense_lung.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.threshold import dense_lung
from CovidCTAnalysisLib.threshold.lesions import threshold_labelmap

SIZE = (128, 128, 80)


def _coverage(seed: int) -> tuple[float, float]:
    ph = make_phantom("pneumonia", seed=seed, size=SIZE)
    labels = sitk.GetArrayFromImage(threshold_labelmap(ph.image))
    truth = sitk.GetArrayViewFromImage(ph.truth)
    consolidation = truth == LESION
    covered = float(np.count_nonzero(consolidation & (labels > 0)) / np.count_nonzero(consolidation))
    dice = 2.0 * np.count_nonzero((labels > 0) & (truth > 0)) / (np.count_nonzero(labels) + np.count_nonzero(truth))
    return covered, float(dice)


@pytest.mark.slow
def test_lobar_consolidation_at_the_chest_wall_is_inside_the_lungs(monkeypatch):
    covered, dice = _coverage(103)
    assert covered >= 0.7 and dice >= 0.95
    # The same phantom without the dense-lung step: most of the consolidation was left out.
    monkeypatch.setattr("CovidCTAnalysisLib.threshold.lungs.add_dense_lung", lambda labels, *args: labels)
    assert _coverage(103)[0] < 0.3


def test_below_diaphragm_follows_the_tissue_under_the_lung():
    # A column model: lung above z = 6 on the left half; tissue below it; on the right half a
    # consolidation (tissue) rises to z = 9 under aerated lung: a plateau narrower than the window.
    nz, ny, nx = 14, 60, 60
    lung = np.zeros((nz, ny, nx), bool)
    lung[6:] = True
    lung[6:9, 10:20, 10:20] = False  # consolidation, with aerated lung above it
    lung[0, :3, :3] = True  # the lowest lung slice (a costophrenic recess) starts the runs
    tissue = ~lung
    body = np.ones_like(lung)
    below = dense_lung.below_diaphragm(tissue, lung, body, (2.0, 2.0))
    assert below[3, 30, 30] and not below[7, 30, 30]  # the diaphragm under aerated lung
    assert not below[7, 15, 15]  # the consolidation sits above the (opened) diaphragm height
    assert below[4, 15, 15]


def test_mediastinum_is_between_the_lungs_row_by_row():
    labels = np.zeros((3, 10, 30), np.uint8)
    labels[:, :, 2:8] = 2  # right lung at low x (LPS)
    labels[:, :, 20:28] = 1
    labels[1, 5, 20:28] = 0  # one row of the left lung consolidated: its edge comes from the slices around
    med = dense_lung.mediastinum_rows(labels, (2.0, 2.0, 2.0))
    assert med[0, 0, 8:20].all() and not med[0, 0, 7] and not med[0, 0, 20]
    assert med[1, 5, 8:20].all() and not med[1, 5, 22]
