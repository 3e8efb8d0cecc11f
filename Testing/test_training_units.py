"""Unit tests of the training helpers: splits, label order, class names, metrics, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch


def test_split_by_patient_is_seeded_stratified_and_order_free():
    from training.splits import split_by_patient

    ids = [f"p{i:02d}" for i in range(20)]
    classes = [i % 2 for i in range(20)]
    a = split_by_patient(ids, classes, 0.7, seed=3)
    b = split_by_patient(ids[::-1], classes[::-1], 0.7, seed=3)
    assert a == b  # the order of the input does not matter
    assert set(a.train).isdisjoint(a.val) and set(a.train) | set(a.val) == set(ids)
    assert len(a.train) == 14 and len(a.val) == 6
    assert sum(classes[ids.index(p)] for p in a.val) == 3  # stratified: 3 of each class held out
    assert split_by_patient(ids, classes, 0.7, seed=4) != a
    with pytest.raises(ValueError, match="train_fraction"):
        split_by_patient(ids, classes, 1.5)


def test_split_cases_keeps_a_patients_cases_together():
    from training.splits import split_cases

    cases = [f"phantom-{k}-{s}" for s in range(10) for k in ("normal", "covid")]
    groups = [c.rsplit("-", 1)[1] for c in cases]
    split = split_cases(cases, groups, None, 0.7, seed=0)
    for s in range(10):
        assert (f"phantom-normal-{s}" in split.train) == (f"phantom-covid-{s}" in split.train)
    assert len(split.val) == 6


def test_covid_ct_md_labels_are_reordered_from_superior_first():
    from training.classifier_data import labels_by_z

    img = sitk.Image(4, 4, 5, sitk.sitkInt16)  # identity direction: z index increases superiorly
    upstream = np.array([1, 1, 0, 0, 0, 0, 0])  # padded row; index 0 = most superior
    assert labels_by_z(upstream, img).tolist() == [0, 0, 0, 1, 1]
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # z index increases inferiorly
    assert labels_by_z(upstream, img).tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="slice labels"):
        labels_by_z(np.zeros(3), img)


def test_class_names_and_aliases():
    from training.classifier_data import class_index, parse_class_folders

    assert class_index("CAP") == class_index("Pneumonia") == 1
    assert class_index("covid") == 2 and class_index("Normal") == 0
    with pytest.raises(ValueError, match="not known"):
        class_index("flu")
    assert parse_class_folders("Normal=N,COVID-19=C") == {0: "N", 2: "C"}


def test_parse_seeds():
    from training.phantom_cache import parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError):
        parse_seeds(",")


def test_classification_metrics_known_answer():
    from training.metrics import classification_metrics

    y = [0, 0, 1, 1, 2, 2]
    probs = np.array([[.9, .05, .05], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.1, .1, .8], [.3, .3, .4]])
    m = classification_metrics(y, probs, ["Normal", "Pneumonia", "COVID-19"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert m["per_class"]["Normal"]["sensitivity"] == 0.5 and m["per_class"]["Normal"]["specificity"] == 1.0
    assert m["per_class"]["Pneumonia"]["specificity"] == 0.75
    assert m["per_class"]["COVID-19"]["auc"] == 1.0


def test_dice_hd95_and_summary():
    from training.metrics import dice_hd95, summarise

    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    pred = np.roll(truth, 2, axis=2)  # shifted 2 voxels along x
    r = dice_hd95(pred, truth, [1, 3], (1.0, 1.0, 2.0))
    assert r[1]["dice"] == pytest.approx(0.8)
    assert r[1]["hd95_mm"] == pytest.approx(4.0)  # 2 voxels of 2 mm
    assert r[3]["dice"] is None and r[3]["hd95_mm"] is None  # absent from both: undefined, as in the core
    s = summarise([r, r], {1: "Left lung", 3: "Lesion"})
    assert s["Left lung"]["dice_mean"] == pytest.approx(0.8) and s["Left lung"]["dice_std"] == 0.0
    assert s["Lesion"]["n_cases"] == 0 and s["Lesion"]["dice_mean"] is None


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    from training.common import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model, opt, 4, 0.5, None, {"history": [1]})
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(tmp_path / "c.pt", other, other_opt)
    assert state["epoch"] == 4 and state["best_metric"] is None and state["extra"] == {"history": [1]}
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(SystemExit, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", other)


def test_resume_continues_from_the_last_epoch(tmp_path):
    import json

    from training import train_segmenter

    args = ["--dataset", "phantoms", "--phantom-seeds", "0-1", "--phantom-kinds", "covid", "--phantom-spacing", "9",
            "--spacing", "9", "--roi", "16", "--batch-size", "1", "--channels", "2,4", "--strides", "2",
            "--num-res-units", "0", "--device", "cpu", "--threads", "1", "--output-dir", str(tmp_path / "run")]
    assert train_segmenter.main([*args, "--epochs", "1"]) == 0
    assert train_segmenter.main([*args, "--epochs", "2", "--resume"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [h["epoch"] for h in run["history"]] == [0, 1]
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 1


def test_bad_arguments_are_refused_clearly(tmp_path, capsys):
    from training import train_classifier

    with pytest.raises(SystemExit, match="--csv is required"):
        train_classifier.main(["--dataset", "nifti-csv", "--output-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="level,width"):
        train_classifier.main(["--dataset", "nifti-csv", "--csv", "x.csv", "--windows=a,b",
                               "--output-dir", str(tmp_path / "o")])


def test_pretrained_file_is_checked_and_loaded(tmp_path):
    from CovidCTAnalysisLib.errors import ModelError
    from CovidCTAnalysisLib.models.networks import build_classifier, sha256_file
    from torchvision.models import resnet50

    imagenet = resnet50(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "r50.pth")
    sha = sha256_file(tmp_path / "r50.pth")
    model = build_classifier(3, tmp_path / "r50.pth", sha)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight) and model.fc.out_features == 3
    with pytest.raises(ModelError, match="sha256"):
        build_classifier(3, tmp_path / "r50.pth", "0" * 64)
    assert float(model.layer1[0].bn3.weight.detach().abs().sum()) > 0.0  # ImageNet weights are kept
    scratch = build_classifier(3, zero_init_residual=True)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0.0 for layer in (scratch.layer1, scratch.layer4) for b in layer)


def test_phantom_slice_labels_and_clear_slices_train_normal(tmp_path):
    from training.classifier_data import TRACE_SLICE, phantom_cases
    from training.classifier_slices import SliceDataset, volume_slices

    case = phantom_cases(["covid"], [3], tmp_path / "cache", spacing=4.0)[0]
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.truth)))
    lesion_voxels = (truth == 3).reshape(truth.shape[0], -1).sum(axis=1)
    share = lesion_voxels / np.maximum((truth > 0).reshape(truth.shape[0], -1).sum(axis=1), 1)
    labels = case.slice_labels
    assert set(np.unique(labels)) == {0, 1, TRACE_SLICE}
    assert (lesion_voxels[labels == 0] == 0).all() and (lesion_voxels[labels != 0] > 0).all()
    assert share[labels == 1].min() > share[labels == TRACE_SLICE].max()  # tips: a small share of the lung

    picked = volume_slices(case, {"input_size": 32}, max_slices=4)
    assert picked.y.count(2) == 4 and picked.y.count(0) == 2  # max 4 lesion slices, half as many clear ones
    assert all(labels[z] == (1 if y == 2 else 0) for z, y in zip(picked.z, picked.y, strict=True))  # no tips
    assert SliceDataset([picked], {"input_size": 32}).y.tolist() == picked.y
    skipped = volume_slices(case, {"input_size": 32}, max_slices=4, clear_slices="skip")
    assert skipped.y == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="clear_slices='maybe'"):
        volume_slices(case, {"input_size": 32}, clear_slices="maybe")


@pytest.mark.parametrize("script", ["classifier", "segmenter"])
def test_bf16_precision_trains_validates_every_n_and_exports_plain_weights(script, tmp_path):
    import json

    from CovidCTAnalysisLib.models.folder import load_model_folder

    from training import train_classifier, train_segmenter
    from training.export import export

    common = ["--dataset", "phantoms", "--phantom-seeds", "0-2", "--phantom-spacing", "9", "--device", "cpu",
              "--threads", "1", "--precision", "bf16", "--epochs", "3", "--val-every", "2",
              "--output-dir", str(tmp_path / "run")]
    if script == "classifier":
        train_classifier.main([*common, "--phantom-kinds", "normal,covid", "--input-size", "32",
                               "--max-slices-per-case", "2", "--batch-size", "2"])
        validated = [h["epoch"] for h in json.loads((tmp_path / "run" / "run.json").read_text())["history"]
                     if "val_slice_accuracy" in h]
    else:
        train_segmenter.main([*common, "--phantom-kinds", "covid", "--spacing", "9", "--roi", "16",
                              "--batch-size", "1", "--channels", "2,4", "--strides", "2", "--num-res-units", "0"])
        validated = [h["epoch"] for h in json.loads((tmp_path / "run" / "run.json").read_text())["history"]
                     if "val_dice" in h]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["training"]["precision"] == "bf16" and run["training"]["precision_requested"] == "bf16"
    assert validated == [1, 2]  # every 2nd epoch, and the last
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(v.is_contiguous() for v in state.values())  # trained channels-last, saved plain
    export(tmp_path / "run", tmp_path / "folder", f"t-{script}", "0.0.1", demo=True)
    loaded = load_model_folder(tmp_path / "folder", "cpu")
    assert all(v.dtype != torch.bfloat16 for v in loaded.module.state_dict().values())


def test_precision_auto_takes_bf16_only_where_the_device_runs_it_natively(monkeypatch):
    # bf16 autocast on a CPU without AVX-512 is emulated: a ResNet-50 step took 14.8 s against 1 s in fp32
    from training import common

    cpu, said = torch.device("cpu"), []
    monkeypatch.setattr(common, "native_bf16", lambda device: False)
    auto = common.Precision("auto", cpu, spatial_dims=3, log=said.append)
    assert (auto.name, auto.requested, auto.memory_format) == ("fp32", "auto", torch.contiguous_format)
    forced = common.Precision("bf16", cpu, spatial_dims=2, log=said.append)
    assert forced.name == "bf16"  # asked for explicitly: kept, but said
    assert "fp32 (cpu has no native bfloat16)" in said[0] and "emulates" in said[1] and len(said) == 2
    monkeypatch.setattr(common, "native_bf16", lambda device: True)
    auto = common.Precision("auto", cpu, spatial_dims=2)
    assert (auto.name, auto.memory_format) == ("bf16", torch.channels_last)
    assert common.Precision("bf16", cpu, spatial_dims=2).note is None
    assert common.Precision("fp32", cpu, spatial_dims=2).note is None
    with pytest.raises(ValueError, match="'fp16'"):
        common.Precision("fp16", cpu, spatial_dims=2)


def test_native_bf16_reads_the_device():
    from training.common import native_bf16

    assert native_bf16(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bf16(torch.device("meta")) is False


def test_phantom_set_in_parallel_matches_one_process(tmp_path):
    from training.phantom_cache import phantom_set

    lines = []
    parallel = phantom_set(["normal", "covid"], [0, 1], tmp_path / "a", spacing=9, workers=2,
                           log=lambda _stage, msg: lines.append(msg))
    serial = phantom_set(["normal", "covid"], [0, 1], tmp_path / "b", spacing=9, workers=1)
    assert [(p.kind, p.seed) for p in parallel] == [(p.kind, p.seed) for p in serial] == [
        ("normal", 0), ("covid", 0), ("normal", 1), ("covid", 1)]
    for a, b in zip(parallel, serial, strict=True):
        for x, y in ((a.image, b.image), (a.truth, b.truth)):
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(x))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(y))))
    assert len(lines) == 4 and all("2 processes" in line for line in lines)
    again = []
    phantom_set(["normal", "covid"], [0, 1], tmp_path / "a", spacing=9, log=lambda _s, m: again.append(m))
    assert again == [f"4/4 phantoms already in {tmp_path / 'a'}"]  # nothing made twice


def test_demo_says_up_front_how_long_training_takes(tmp_path):
    import json

    from training.demo import MEASURED_DURATIONS, expected_duration

    assert expected_duration(tmp_path) == MEASURED_DURATIONS  # nothing run here yet: the measured references
    full = {"finished": "2026-12-03T19:20:00Z", "total_s": 2950.0, "trained": ["classifier", "segmenter", "interactive"],
            "quick": False}
    quick = {**full, "total_s": 400.0, "quick": True}
    partial = {**full, "total_s": 90.0, "trained": ["interactive"]}
    older = {k: v for k, v in full.items() if k != "quick"}  # a record from before "quick" was written: unknown
    lines = [json.dumps(full), json.dumps(quick), json.dumps(partial), json.dumps(older), '{"cut sh']
    (tmp_path / "timings-history.jsonl").write_text("\n".join(lines) + "\n")
    assert expected_duration(tmp_path) == "the last full run here took 49 min (2026-12-03T19:20:00Z)"
