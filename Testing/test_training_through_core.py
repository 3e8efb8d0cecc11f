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


def _refused_inputs(tmp_path):
    """Two cases inference refuses: a truncated NIfTI (SimpleITK alone zero-fills it) and a constant volume."""
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    ph = make_phantom("covid", 5, spacing=(6.0, 6.0, 6.0))
    whole = tmp_path / "whole.nii"
    sitk.WriteImage(ph.image, str(whole))
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(whole.read_bytes()[:-4000])
    constant = sitk.Image(ph.image.GetSize(), sitk.sitkInt16) - 1000
    constant.CopyInformation(ph.image)
    sitk.WriteImage(constant, str(tmp_path / "constant.nii.gz"))
    sitk.WriteImage(ph.truth, str(tmp_path / "truth.nii.gz"))
    return [truncated, tmp_path / "constant.nii.gz"], tmp_path / "truth.nii.gz"


def test_training_refuses_what_inference_refuses_with_the_same_error(tmp_path):
    from CovidCTAnalysisLib.errors import InputError
    from CovidCTAnalysisLib.loading.load import load_ct

    from training.classifier_data import ClassifierCase
    from training.classifier_slices import volume_slices
    from training.segmenter_data import SegCase
    from training.segmenter_prepare import prepare_case

    bad, truth = _refused_inputs(tmp_path)
    for path in bad:
        with pytest.raises(InputError) as inference:
            load_ct(path)  # what `covidct analyze` does first
        classifier_case = ClassifierCase(patient_id="p", class_index=2, source="test", image=path)
        with pytest.raises(InputError) as classifier:
            volume_slices(classifier_case, {"input_size": 32})
        with pytest.raises(InputError) as segmenter:
            prepare_case(SegCase("c", path, truth, "test", True), {"spacing_mm": [6, 6, 6], "roi_size": [16, 16, 16]},
                         n_labels=4)
        assert str(classifier.value) == str(segmenter.value) == str(inference.value)
        assert ("truncated" if path.suffix == ".nii" else "constant") in str(inference.value)


def test_training_label_files_get_the_nifti_completeness_check(tmp_path):
    from CovidCTAnalysisLib.errors import InputError

    from training.segmenter_data import SegCase, read_label

    _, truth = _refused_inputs(tmp_path)
    cut = tmp_path / "cut_truth.nii"
    sitk.WriteImage(sitk.ReadImage(str(truth)), str(cut))
    cut.write_bytes(cut.read_bytes()[:-500])
    with pytest.raises(InputError, match="truncated"):
        read_label(SegCase("c", truth, cut, "test", True), n_labels=4)


def test_training_scripts_print_progress_through_one_helper(capsys, monkeypatch):
    import time

    from training import common, evaluate
    from training.progress import format_progress

    assert format_progress("epoch", 3.25, "loss 0.5") == "[epoch]     3.2s | loss 0.5"
    started = time.monotonic() - 12.0
    common.RunContext(rank=0, started=started).log("epoch", "loss 0.5")
    common.RunContext(rank=1, started=started).log("epoch", "never shown")  # only rank 0 prints
    evaluate._log("2/3 case", started)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[1] for line in lines] == ["loss 0.5", "2/3 case"]
    for line, step in zip(lines, ("epoch", "evaluate"), strict=True):
        head = line.split(" | ")[0]
        assert head.startswith(f"[{step}] ") and 12.0 <= float(head.split()[-1].rstrip("s")) < 60.0

    # the scripts hold no printer of their own: each line goes through training.progress
    seen = []
    monkeypatch.setattr(common, "progress_line", lambda *a, **k: seen.append(a[:2]))
    monkeypatch.setattr(evaluate, "progress_line", lambda *a, **k: seen.append(a[:2]))
    common.RunContext(rank=0).log("epoch", "x")
    evaluate._log("y", 0.0)
    assert seen == [("epoch", "x"), ("evaluate", "y")] and capsys.readouterr().out == ""


def test_segmenter_validation_dice_is_the_core_dice():
    import torch
    from CovidCTAnalysisLib.models.transforms import segmenter_settings
    from CovidCTAnalysisLib.results.statistics import dice

    from training.train_segmenter import validate

    class Echo(torch.nn.Module):
        """Predicts the class written in the image (value / 10): the validation sees a known prediction."""

        def forward(self, x):
            return torch.nn.functional.one_hot((x[:, 0] * 10).round().long(), 4).permute(0, 4, 1, 2, 3).float() * 5

    pred, truth = _masks()
    other_pred, other_truth = pred.copy(), truth.copy()
    other_truth[other_truth == 3] = 1  # no lesion in this case's truth: it does not count for the lesion mean
    cases = [{"image": (p / 10.0)[None].astype(np.float32), "label": t[None]} for p, t in
             ((pred, truth), (other_pred, other_truth))]
    prep = segmenter_settings({"spacing_mm": [1, 1, 1], "roi_size": [8, 8, 8]})
    scores, _overlay = validate(Echo(), cases, prep, 4, torch.device("cpu"))
    assert scores["1"] == pytest.approx((dice(pred == 1, truth == 1) + dice(other_pred == 1, other_truth == 1)) / 2)
    assert scores["3"] == pytest.approx(dice(pred == 3, truth == 3))  # the case without lesion truth is skipped
    assert scores["2"] is None  # in no case's truth: no Dice, never NaN or 1.0


def test_epoch_lines_say_how_long_is_left():
    import time

    from training.progress import time_left_text

    now = time.monotonic()
    assert time_left_text(4, 36, now - 100.0) == ", about 15 min left"  # 25 s an epoch, 36 epochs to go
    assert time_left_text(2, 1, now - 20.0) == ", about 10 s left"
    assert time_left_text(0, 40, now) == ""  # nothing measured yet
    assert time_left_text(40, 0, now - 500.0) == ""  # the last epoch
