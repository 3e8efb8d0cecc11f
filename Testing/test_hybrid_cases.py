"""Hybrid training cases (``training/hybrid_cases.py``): synthetic lesions painted into a "real" lung.

The background here is a normal phantom standing in for a real scan (its threshold lungs as
the lung labels); one realdata test checks the backgrounds taken from ``../shared/data``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.threshold.lungs import segment_lungs
from scipy import ndimage as ndi

from training import hybrid_cases as hy


@pytest.fixture(scope="module")
def background():
    ph = make_phantom("normal", seed=4, size=(112, 112, 72))
    return hy.Background("phantom-normal-4", "phantom-4", ph.image, segment_lungs(ph.image))


def test_clear_runs():
    labels = [0] * 5 + [1] * 3 + [0] * 12 + [1] + [0] * 13
    assert hy.clear_runs(labels, min_len=12) == [(8, 20), (21, 34)]
    assert hy.clear_runs([1, 1, 0, 0], min_len=3) == []


@pytest.mark.parametrize("kind", hy.KINDS)
def test_lesions_lie_in_the_lung_and_keep_the_texture_underneath(background, kind):
    hu0 = sitk.GetArrayFromImage(background.image).astype(np.float32)
    lungs = sitk.GetArrayFromImage(background.lungs)
    hu, labels, count = hy.paint_lesions(background.image, background.lungs, kind, seed=3)
    lesion = labels == LESION
    assert count >= 1 and lesion.sum() > 200
    assert np.all(lungs[lesion] > 0)  # truth is exact: lesions only where there was lung
    assert np.array_equal(labels[~lesion], lungs[~lesion])  # the rest of the lung labels untouched
    assert np.array_equal(hu[lungs == 0], hu0[lungs == 0])  # nothing painted outside the lung
    assert hu[lesion].mean() > hu0[lesion].mean() + 120.0  # denser where the lesion is (soft edges included)
    # The fine detail (noise, small vessels) under the lesion is the background's, not smoothed away.
    sigma = [hy.LOWPASS_SIGMA_MM / s for s in background.image.GetSpacing()[::-1]]
    core = ndi.binary_erosion(lesion, iterations=2)
    fine0 = (hu0 - ndi.gaussian_filter(hu0, sigma))[core]
    fine = (hu - ndi.gaussian_filter(hu, sigma))[core]
    noise0 = 1.4826 * np.median(np.abs(fine0 - np.median(fine0)))
    assert 1.4826 * np.median(np.abs(fine - np.median(fine))) > 0.7 * noise0  # the noise is not smoothed away
    if kind == "covid":  # ground glass: the vessels and noise underneath stay (crazy-paving septa add their own)
        assert np.corrcoef(fine0, fine)[0, 1] > 0.6


def test_same_seed_same_case_other_seed_other_case(background):
    a = hy.make_hybrid(background, "covid", 5)
    b = hy.make_hybrid(background, "covid", 5)
    c = hy.make_hybrid(background, "covid", 6)
    assert np.array_equal(sitk.GetArrayViewFromImage(a[0]), sitk.GetArrayViewFromImage(b[0]))
    assert a[2] == b[2]
    assert not np.array_equal(sitk.GetArrayViewFromImage(a[1]), sitk.GetArrayViewFromImage(c[1]))
    image, truth, info = a
    assert image.GetSize() == background.image.GetSize() and image.GetPixelID() == sitk.sitkInt16
    assert set(np.unique(sitk.GetArrayViewFromImage(truth))) <= {0, 1, 2, 3}
    assert info["lesion_ml"] > 0 and info["patient"] == "phantom-4" and "noise_sd_hu" in info


def test_one_seed_draws_differently_per_background(background):
    """make demo paints one seed per background: the draws must differ between backgrounds (an unsalted
    generator flipped every background alike and painted the same number of lesions into each)."""
    infos = [hy.make_hybrid(hy.Background(f"bg-{i}", "phantom-4", background.image, background.lungs), "covid", 0)[2]
             for i in range(6)]
    assert len({i["flipped_left_right"] for i in infos}) == 2
    assert len({(i["elastic_max_mm"], i["rotation_deg"], i["lesions"]) for i in infos}) == 6


@pytest.mark.realdata
@pytest.mark.slow
def test_real_backgrounds_hold_only_clear_slices(shared_data, tmp_path, monkeypatch):
    labels = json.loads((shared_data / "covid-ct-md" / "labels.json").read_text())["cases"]
    backgrounds = hy.real_backgrounds(shared_data)
    names = [b.case_id for b in backgrounds]
    assert "normal001" in names and any(n.startswith("P001-z") for n in names) and any(n.startswith("cap001") for n in names)
    for b in backgrounds:
        if b.patient == "normal001":
            continue
        z0, z1 = (int(v) for v in b.case_id.split("-z")[1].split("-"))
        assert not any(labels[b.patient]["slice_infection_label_by_nifti_z"][z0:z1 + 1])  # radiologists: clear
        assert b.image.GetSize()[2] == z1 - z0 + 1
    cases = hy.hybrid_seg_cases(shared_data, ["covid"], [0], tmp_path)
    assert len(cases) == len(backgrounds) and {c.group for c in cases} == {"real-P001", "real-cap001", "real-normal001"}
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[-1].label)))
    assert (truth == LESION).sum() > 0 and (truth == 1).sum() > 0 and (truth == 2).sum() > 0
    # Painted in processes, the same case as painted here; read back from the cache without segmenting the
    # real scans again (their background names are kept beside the cases)
    image, _, _ = hy.make_hybrid(backgrounds[-1], "covid", 0)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(cases[-1].image))), sitk.GetArrayFromImage(image))

    def no_reading(real):
        raise AssertionError(f"{real.patient} read again although its hybrids are cached")

    monkeypatch.setattr(hy, "patient_backgrounds", no_reading)
    again = hy.hybrid_seg_cases(shared_data, ["covid"], [0], tmp_path)
    assert [(c.case_id, c.image, c.label) for c in again] == [(c.case_id, c.image, c.label) for c in cases]
    # A case file gone: that patient's backgrounds are made again (and the case repainted)
    cases[0].image.unlink()
    with pytest.raises(AssertionError, match="read again"):
        hy.hybrid_seg_cases(shared_data, ["covid"], [0], tmp_path)
