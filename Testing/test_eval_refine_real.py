"""The robot user of ``benchmarks/eval_refine_real.py``: clicks placed from slice labels alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG

from benchmarks.eval_refine_real import evaluate, place_clicks, write_markups

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm: a slice is positive at >= 25 voxels of lesion


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _chest(n_slices=12, size=80, seed=0):
    """Two square lungs at -850 HU (noise SD 15) in soft tissue; labels 1/2, no lesion."""
    rng = np.random.default_rng(seed)
    hu = np.full((n_slices, size, size), 40.0) + rng.normal(0, 15, (n_slices, size, size))
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, 10:70, 5:38], labels[:, 10:70, 42:75] = RIGHT_LUNG, LEFT_LUNG
    hu[labels > 0] -= 890.0
    return hu.astype(np.float32), labels


def test_add_click_lands_in_the_ground_glass_not_on_a_vessel_and_remove_click_on_the_larger_false_lesion():
    hu, labels = _chest()
    ggo, vessel = _disc(hu.shape[1:], (45, 58), 7), _disc(hu.shape[1:], (30, 20), 3)
    hu[4][ggo] = -550.0  # missed ground glass in the left lung, slice 4
    hu[4][vessel] = 40.0  # a vessel cut across in the right lung: denser, more HU in all, but not ground glass
    hu[8][vessel] = 40.0
    big, small = _disc(hu.shape[1:], (40, 20), 6), _disc(hu.shape[1:], (25, 60), 3)
    labels[8][big] = LESION  # false lesion on a clear slice: the larger piece gets the click
    labels[8][small] = LESION
    labels[2][_disc(hu.shape[1:], (40, 20), 6)] = LESION  # predicted on an infected slice: no click
    infected = np.zeros(hu.shape[0], bool)
    infected[[2, 4, 6]] = True  # slice 6: labelled infected but nothing lesion-like there: no click

    clicks = place_clicks(hu, labels, infected, SPACING)

    assert [(c.kind, c.index_zyx[0]) for c in clicks] == [("add", 4), ("remove", 8)]
    add, remove = clicks
    assert ggo[add.index_zyx[1:]], f"add click {add.index_zyx} is not in the ground glass"
    assert big[remove.index_zyx[1:]], f"remove click {remove.index_zyx} is not on the larger false lesion"
    assert add.region_mm2 == pytest.approx(ggo.sum(), rel=0.5)  # the aimed region is the patch (minus margins)


def test_worst_slices_first_limited_and_spread_along_z():
    hu, labels = _chest(n_slices=20)
    infected = np.zeros(hu.shape[0], bool)
    radii = {3: 5, 4: 8, 12: 6}  # slice 4 holds the largest patch, slice 3 (next to it) a smaller one
    for z, r in radii.items():
        hu[z][_disc(hu.shape[1:], (40, 58), r)] = -500.0
        infected[z] = True
    for z, r in {10: 4, 16: 7}.items():
        labels[z][_disc(hu.shape[1:], (40, 20), r)] = LESION

    clicks = place_clicks(hu, labels, infected, SPACING, max_add=2, max_remove=1, min_gap_mm=4.0)

    # adds: slice 4 (largest), then slice 12 (slice 3 is closer than 4 mm to slice 4); one remove, the largest
    assert [(c.kind, c.index_zyx[0]) for c in clicks] == [("add", 4), ("add", 12), ("remove", 16)]


def test_place_clicks_refuses_labels_of_the_wrong_length():
    hu, labels = _chest()
    with pytest.raises(ValueError, match="slice labels"):
        place_clicks(hu, labels, np.zeros(hu.shape[0] - 1, bool), SPACING)


def test_markups_file_reads_back_as_lps_clicks(tmp_path):
    from CovidCTAnalysisLib.interactive.clicks import read_markups

    path = write_markups([(1.5, -2.0, 30.0), (4.0, 5.0, -6.0)], tmp_path / "add.mrk.json", "add-lesion")
    clicks = read_markups(path, "add")
    assert [c.lps for c in clicks] == [(1.5, -2.0, 30.0), (4.0, 5.0, -6.0)]
    assert all(c.positive for c in clicks)


@pytest.mark.slow
@pytest.mark.realdata
def test_p001_clicks_follow_the_slice_labels_and_refine_changes_only_the_lesion(
        shared_data, tiny_interactive_models, tmp_path):
    from training.real_cases import covid_ct_md_sample

    case = {c.patient: c for c in covid_ct_md_sample(shared_data)}["P001"]
    result, kept = evaluate(case.image_path, case.slice_labels, tmp_path, models_dir=str(tiny_interactive_models),
                            max_add=2, max_remove=2)
    truth, before = kept["truth"], kept["before"]
    assert result["clicks"], "P001's threshold result disagrees with its labels on some slices: clicks expected"
    for c in result["clicks"]:
        z, y, x = c["index_zyx"]
        if c["kind"] == "add":
            assert truth[z] and not kept["pos_before"][z] and before[z, y, x] in (LEFT_LUNG, RIGHT_LUNG)
        else:
            assert not truth[z] and kept["pos_before"][z] and before[z, y, x] == LESION
    assert result["non_lesion_labels_unchanged_outside_lesion"]  # lung + lesion together stay as they were
    assert result["before"]["specificity"] < 1.0  # the threshold method marks some clear slices
    assert result["demo"] and result["interactive_model"]["id"]
    json.dumps(result, allow_nan=False)
