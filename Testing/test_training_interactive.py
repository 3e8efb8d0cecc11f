"""Training the interactive model: simulated sessions, a short run exported to a model folder, and the
robot-user evaluation written into its metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.models.folder import check_model_folder

from training import interactive_sessions as sessions
from training.evaluate_interactive import noc, summarise


def case(shape=(40, 40, 40)):
    label = np.zeros(shape, np.uint8)
    label[5:35, 5:35, 5:19] = 2
    label[5:35, 5:35, 21:35] = 1
    label[15:25, 15:25, 25:32] = LESION
    image = np.where(label > 0, 0.1, 0.6).astype(np.float32)
    image[label == LESION] = 0.4
    return image, label


def test_patches_pad_outside_the_volume():
    a = np.arange(27).reshape(3, 3, 3)
    p = sessions.crop_patch(a, (0, 0, 0), (3, 3, 3), fill=-1)
    assert p[1, 1, 1] == a[0, 0, 0] and p[0, 0, 0] == -1


@pytest.mark.parametrize("start, p_empty, p_auto", [("empty", 1.0, 0.0), ("automatic", 0.0, 1.0),
                                                    ("truth", 0.0, 0.0)])
def test_each_start_state(start, p_empty, p_auto):
    image, label = case()
    sim = sessions.ClickSimulation(p_empty=p_empty, p_automatic=p_auto, lesion_centre_prob=1.0)
    s = sessions.sample_patch(image, label, (24, 24, 24), sim, np.random.default_rng(0))
    assert s.start == start and s.truth.any()
    assert not (s.current & ~s.lungs).any(), "the automatic start stays within the lungs"
    if start == "empty":
        assert not s.positive and not s.negative and not s.current.any()
    elif start == "truth":
        assert len(s.positive) == 1 and s.truth[s.positive[0]] and not s.negative
    else:
        assert len(s.positive) + len(s.negative) == 1
        where = (s.positive or s.negative)[0]
        assert s.truth[where] != s.current[where], "the first click lands on an error of the automatic start"
    x = sessions.batch_input([s], {"spacing_mm": [2.0] * 3, "roi_size": [24] * 3, "guidance_sigma_mm": 4.0})
    assert tuple(x.shape) == (1, 3, 24, 24, 24)


def test_lesion_only_data_count_everything_as_lung():
    image, label = case()
    s = sessions.sample_patch(image, (label == LESION).astype(np.uint8), (24, 24, 24), sessions.ClickSimulation(),
                              np.random.default_rng(1), lesion_value=1)
    assert s.lungs.all()


def test_noc_and_summary():
    assert noc([0.5, 0.86, 0.95], 0.85, 20) == 1 and noc([0.5, 0.6], 0.9, 20) == 20 and noc([0.9], 0.85, 20) == 0
    s = summarise({"empty": [[0.0, 0.5, 0.9, 0.88], [0.0, 0.7, 0.8, 0.92]]}, 3)["empty"]
    assert s["dice_after_clicks"] == {"0": 0.0, "1": 0.6, "3": 0.9}
    assert s["noc85"] == 2.5 and s["noc90"] == 2.5 and s["largest_fall_between_clicks"] == 0.0


@pytest.mark.slow
def test_train_export_and_robot_evaluation_end_to_end(tmp_path):
    from training.evaluate_interactive import main as evaluate
    from training.export import export
    from training.train_interactive import main as train

    common = ["--dataset", "phantoms", "--phantom-kinds", "covid", "--phantom-seeds", "0-2", "--phantom-spacing",
              "6", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run"), "--roi", "16",
              "--spacing", "6", "--channels", "4,8", "--strides", "2", "--num-res-units", "1", "--batch-size", "2",
              "--val-patches", "2", "--max-inner", "1", "--threads", "2"]
    assert train([*common, "--iterations", "2", "--val-every", "1"]) == 0
    assert train([*common, "--iterations", "3", "--val-every", "1", "--resume"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [h["step"] for h in run["history"]] == [1, 2, 3] and run["task"] == "interactive"
    meta = export(tmp_path / "run", tmp_path / "model", "test-interactive", "0.0.1", demo=True)
    assert meta.task == "interactive" and meta.raw["click_simulation"]["max_inner"] == 1
    assert meta.preprocessing["lesion_edges"] is True  # the default, recorded for refine to follow
    assert evaluate(["--model-dir", str(tmp_path / "model"), "--phantom-seeds", "100", "--max-clicks", "2",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    robot = check_model_folder(tmp_path / "model").eval_metrics["robot_user"]
    assert set(robot["starts"]) == {"empty", "automatic"} and len(robot["starts"]["empty"]["dice_curve"]) == 3
    assert (tmp_path / "model" / "robot_user.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="overlaps the training seeds"):
        evaluate(["--model-dir", str(tmp_path / "model"), "--phantom-seeds", "1", "--no-write"])


def test_automatic_start_takes_the_segmenters_lesions_inside_the_true_lungs(monkeypatch):
    import SimpleITK as sitk
    from CovidCTAnalysisLib.inference import segment as segment_module
    from CovidCTAnalysisLib.threshold import lungs as lungs_module

    from training.evaluate_interactive import automatic_start, start_labels

    _, truth = case()
    image = sitk.GetImageFromArray(np.zeros(truth.shape, np.float32))
    drawn = np.zeros(truth.shape, np.uint8)
    drawn[10:20, 10:20, 10:30] = LESION  # partly in the right lung, partly across the gap between the lungs
    drawn[0:3, 0:3, 0:3] = LESION  # outside the body
    calls = []
    monkeypatch.setattr(lungs_module, "segment_lungs", lambda img: "lungs")
    monkeypatch.setattr(lungs_module, "lung_extent", lambda lungs: "extent")
    monkeypatch.setattr(segment_module, "segment", lambda img, box, model, device: (
        calls.append((box, model, device)) or sitk.GetImageFromArray(drawn)))
    start = start_labels(image, truth, "automatic", segmenter="SEG", device="cpu")
    assert calls == [("extent", "SEG", "cpu")]
    expected = np.where(truth == LESION, 1, truth)  # the true lesion goes back to the lung around it (1)
    expected[(drawn == LESION) & (truth > 0)] = LESION
    assert np.array_equal(start, expected)
    empty = start_labels(image, truth, "empty", segmenter="SEG")
    assert len(calls) == 1 and not (empty == LESION).any() and np.array_equal(empty > 0, truth > 0)
    assert automatic_start(None)["source"] == "threshold"
