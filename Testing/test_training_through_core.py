"""Training sees what inference sees: the core's ``load_ct`` refusals, the core's Dice/HD95, versioned phantom
caches and one progress printer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def test_phantom_cache_is_keyed_on_the_generator_version(tmp_path, monkeypatch):
    from CovidCTAnalysisLib.phantom import generator

    from training.phantom_cache import phantom_files

    now = phantom_files("normal", 3, tmp_path, spacing=9)
    assert f"_v{generator.PHANTOM_VERSION}_" in now.image.name
    before = now.image.stat().st_mtime_ns
    assert phantom_files("normal", 3, tmp_path, spacing=9).image == now.image  # reused while the version holds
    assert now.image.stat().st_mtime_ns == before

    # A newer generator must not read the older one's phantoms back: it makes (and names) its own.
    monkeypatch.setattr(generator, "PHANTOM_VERSION", generator.PHANTOM_VERSION + ".next")
    newer = phantom_files("normal", 3, tmp_path, spacing=9)
    assert newer.image != now.image and newer.truth != now.truth
    assert newer.image.is_file() and newer.truth.is_file()
    assert now.image.stat().st_mtime_ns == before  # the old files are left alone, never read as the new ones


def _masks():
    rng = np.random.default_rng(4)
    truth = np.zeros((12, 14, 16), np.uint8)
    truth[3:9, 4:11, 2:12] = 1
    truth[5:7, 6:9, 5:8] = 3
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.08] = 1  # speckle
    pred[:, :, :3][pred[:, :, :3] == 1] = 0
    return pred, truth


def test_training_dice_and_hd95_are_the_core_ones_and_agree_with_monai():
    import torch
    from CovidCTAnalysisLib.results.statistics import compare_to_reference
    from monai.metrics import compute_dice

    from training.metrics import dice_hd95, summarise

    pred, truth = _masks()
    spacing_zyx = (2.5, 0.8, 0.7)
    ours = sitk.GetImageFromArray(pred)
    ours.SetSpacing(spacing_zyx[::-1])
    ref = sitk.GetImageFromArray(truth)
    ref.CopyInformation(ours)
    core = compare_to_reference(ours, ref)  # what `covidct analyze --reference` reports
    trained = dice_hd95(pred, truth, [1, 2, 3], spacing_zyx)
    for label, name in ((1, "Left lung"), (2, "Right lung"), (3, "Lesion")):
        assert trained[label]["dice"] == core["dice"][name]
        assert trained[label]["hd95_mm"] == core["hd95_mm"][name]
    # label 2 is in neither mask: undefined (None), never 1.0; the mean skips it (no truth voxels)
    assert trained[2] == {"dice": None, "hd95_mm": None, "truth_voxels": 0}
    assert summarise([trained], {2: "Right lung"})["Right lung"]["dice_mean"] is None

    # MONAI's compute_dice: the same value where defined, NaN (its ignore_empty default) where we say None
    one_hot = lambda a: torch.as_tensor(np.stack([a == k for k in range(4)])[None].astype(np.float32))  # noqa: E731
    monai = compute_dice(one_hot(pred), one_hot(truth), include_background=False)[0].numpy()
    assert monai[0] == pytest.approx(trained[1]["dice"]) and monai[2] == pytest.approx(trained[3]["dice"])
    assert np.isnan(monai[1])
