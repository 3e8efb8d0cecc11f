"""End-to-end: ``covidct analyze`` (threshold and model methods), report keys, progress, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.cli.main import main
from CovidCTAnalysisLib.constants import CLASS_NAMES, LABEL_NAMES

PHANTOM_SIZE = (96, 80, 48)


@pytest.fixture(scope="module")
def covid_nifti(tmp_path_factory) -> Path:
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    ph = make_phantom("covid", 3, size=PHANTOM_SIZE)
    folder = tmp_path_factory.mktemp("phantom")
    sitk.WriteImage(ph.image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(ph.truth, str(folder / "truth.nii.gz"))
    return folder / "ct.nii.gz"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A temp registry with tiny UNTRAINED models (saved with model_folder.save_model_folder)."""
    from CovidCTAnalysisLib import INTENDED_USE
    from CovidCTAnalysisLib.models.folder import save_model_folder
    from CovidCTAnalysisLib.models.networks import build_classifier, build_segmenter
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    root = tmp_path_factory.mktemp("models")
    work = tmp_path_factory.mktemp("model_src")
    common = {"sha256": "0" * 64, "demo": True, "eval_metrics": {}, "intended_use": INTENDED_USE,
              "trained_on": "nothing: untrained test weights", "training_data": {}}
    cls = {**common, "id": "test-classifier", "version": "0.0.1", "task": "classification",
           "architecture": {"name": "resnet50", "kwargs": {}}, "labels": list(CLASS_NAMES),
           "preprocessing": {"input_size": 64, "slice_step": 6, "batch_size": 8}}
    seg_labels = {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}}
    kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    seg = {**common, "id": "test-segmenter", "version": "0.0.1", "task": "segmentation",
           "architecture": {"name": "monai.UNet", "kwargs": kwargs}, "labels": seg_labels,
           "preprocessing": {"spacing_mm": [5.0, 5.0, 5.0], "roi_size": [32, 32, 32]}}
    save_model_folder(build_classifier(len(CLASS_NAMES)), cls, work / "cls")
    save_model_folder(build_segmenter(len(seg_labels), **kwargs), seg, work / "seg")
    registry = ModelRegistry(root)
    registry.install(work / "cls")
    registry.install(work / "seg")
    return root


def _run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


REQUIRED_TOP = ("classification", "segments", "statistics", "models", "method", "device", "timings_s",
                "intended_use", "input", "lung_crosscheck")


def _check_report(report: dict, input_image: sitk.Image) -> None:
    for key in REQUIRED_TOP:
        assert key in report, key
    assert report["intended_use"] == "Research use, not for diagnosis."
    assert set(report["statistics"]["lesion_percent"]) >= {"left", "right", "total"}
    inp = report["input"]
    assert inp["size"] == list(input_image.GetSize())
    assert np.allclose(inp["spacing"], input_image.GetSpacing())
    assert inp["format"] == "nifti"
    for s in report["segments"]:
        assert {"name", "label", "volume_ml", "mean_hu", "sd_hu", "n_components"} <= set(s)
    assert "total" in report["timings_s"]
    text = json.dumps(report).lower()
    assert "phantom^synthetic" not in text and "patientname" not in text


def test_threshold_end_to_end(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run([ "analyze", str(covid_nifti), "--output-dir", str(out), "--method", "threshold",
                              "--progress", "plain"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["segmentation.seg.nrrd", "labelmap.nii.gz", "report.json", "preview.png"])
    report = json.loads((out / "report.json").read_text())
    image = sitk.ReadImage(str(covid_nifti))
    _check_report(report, image)
    assert report["method"] == "threshold"
    assert report["classification"]["ran"] is False and report["classification"]["label"] is None
    assert "not run" in report["classification"]["note"]
    assert report["models"] == []
    lab = sitk.ReadImage(str(out / "labelmap.nii.gz"))
    assert lab.GetSize() == image.GetSize()
    assert np.allclose(lab.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(lab.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(lab.GetDirection(), image.GetDirection(), atol=1e-5)
    arr = sitk.GetArrayFromImage(lab)
    vox_ml = float(np.prod(image.GetSpacing())) / 1000
    by_label = {s["label"]: s for s in report["segments"]}
    for label in LABEL_NAMES:
        assert by_label[label]["volume_ml"] == pytest.approx((arr == label).sum() * vox_ml)
    assert by_label[1]["volume_ml"] > 100 and by_label[2]["volume_ml"] > 100
    assert "Class: not determined" in stdout and "Research use, not for diagnosis." in stdout
    assert "Left lung" in stdout and "Lesion percent" in stdout
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"


def test_reference_gives_dice_and_hd95(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    truth = covid_nifti.parent / "truth.nii.gz"
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold", "--progress", "none",
                         "--reference", str(truth), "--reference-labels", "1=left;2=right;3=lesion"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert set(report["dice"]) == set(LABEL_NAMES.values())
    assert report["dice"]["Left lung"] > 0.7 and report["dice"]["Right lung"] > 0.7  # threshold vs truth
    assert all(v is None or v >= 0 for v in report["hd95_mm"].values())
    assert report["reference"]["labels"] == {"1": 1, "2": 2, "3": 3}


def test_progress_json_lines_end_in_done(covid_nifti, tmp_path, capsys):
    code, stdout, err = _run(["analyze", str(covid_nifti), "-o", str(tmp_path / "o"), "--method", "threshold",
                              "--progress", "json"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]  # every stdout line is JSON
    assert events[-1]["event"] == "done"
    assert Path(events[-1]["report"]) == (tmp_path / "o" / "report.json").resolve()
    fractions = [e["fraction"] for e in events if e["event"] == "step"]
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)
    assert any(e["event"] == "log" and "Research use" in e["message"] for e in events)


def test_refuses_overwrite_without_force(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold", "--progress", "none"],
                capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold",
                         "--segment", "never", "--progress", "none"], capsys)
    assert code == 4 and "--force" in err and err.startswith("error: ")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    bad = tmp_path / "empty.nii.gz"
    bad.write_bytes(b"")
    code, _, err = _run(["analyze", str(bad), "-o", str(out), "--method", "threshold", "--force",
                         "--progress", "none"], capsys)
    assert code == 2 and "empty" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "a failed --force run must change nothing"
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold",
                         "--segment", "never", "--force", "--progress", "none"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["preview.png", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["segmentation"]["ran"] is False and report["segments"] == []


def test_model_method_without_models_stops(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--models-dir", str(tmp_path / "none"),
                         "--progress", "none"], capsys)
    assert code == 3, err
    assert "make demo" in err and "covidct models install" in err
    assert not out.exists()


def test_dicom_seg_required_for_nifti_is_refused(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold",
                         "--dicom-seg", "required", "--progress", "none"], capsys)
    assert code == 5 and "not a DICOM series" in err
    assert not out.exists()


def test_dicom_input_writes_seg_and_refuses_unreferenceable(tmp_path, capsys):
    import pydicom
    from CovidCTAnalysisLib.phantom.generator import make_phantom
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    ph = make_phantom("covid", 5, size=(80, 72, 32))
    written = write_dicom_series(ph.image, tmp_path / "dcm")
    out = tmp_path / "out"
    code, _, err = _run(["analyze", str(tmp_path / "dcm"), "-o", str(out), "--method", "threshold",
                         "--dicom-seg", "required", "--progress", "none"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["format"] == "dicom"
    assert report["dicom_seg"]["written"] is True and (out / "segmentation.dcm").is_file()
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert seg.Modality == "SEG"
    assert "Phantom" not in json.dumps(report)  # no patient name in the report
    for f in written.files:  # damage the UIDs as some public datasets ship them
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ""
        ds.save_as(f)
    out2 = tmp_path / "out2"
    code, _, err = _run(["analyze", str(tmp_path / "dcm"), "-o", str(out2), "--method", "threshold",
                         "--dicom-seg", "required", "--progress", "none"], capsys)
    assert code == 5 and "SOPInstanceUID" in err
    assert not out2.exists()
    code, _, err = _run(["analyze", str(tmp_path / "dcm"), "-o", str(out2), "--method", "threshold",
                         "--progress", "none"], capsys)
    assert code == 0, err
    report = json.loads((out2 / "report.json").read_text())
    assert report["dicom_seg"]["written"] is False and "SOPInstanceUID" in report["dicom_seg"]["reason"]


def test_model_method_end_to_end_with_tiny_models(covid_nifti, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--models-dir", str(tiny_models),
                              "--segment", "always", "--device", "cpu", "--progress", "none"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    _check_report(report, sitk.ReadImage(str(covid_nifti)))
    c = report["classification"]
    assert c["ran"] is True and c["label"] in CLASS_NAMES
    assert set(c["probabilities"]) == set(CLASS_NAMES)
    assert sum(c["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    ids = {m["id"]: m for m in report["models"]}
    assert set(ids) == {"test-classifier", "test-segmenter"}
    for m in ids.values():
        assert len(m["sha256"]) == 64 and m["version"] == "0.0.1" and m["trained_on"]
    assert report["segmentation"]["ran"] is True
    # what post-processing changed in the untrained segmenter's labels (stray pieces, lesion outside the ribs...)
    changes = report["segmentation"]["postprocessing"]
    assert changes and all(isinstance(c, str) and c for c in changes), changes
    assert report["lung_crosscheck"] is not None and "flag" in report["lung_crosscheck"]
    assert "DEMO" in report["warning"]
    assert "DEMO" in stdout and "test-classifier v0.0.1" in stdout
    for stage in ("load", "lungs_threshold", "classifier_load", "classify", "segmenter_load", "rib_cage", "segment"):
        assert stage in report["timings_s"], stage
    lab = sitk.ReadImage(str(out / "labelmap.nii.gz"))
    assert lab.GetSize() == tuple(report["input"]["size"])


def test_model_method_segment_never_and_bad_spec(covid_nifti, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["analyze", str(covid_nifti), "-o", str(out), "--models-dir", str(tiny_models),
                              "--segment", "never", "--progress", "none"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [m["id"] for m in report["models"]] == ["test-classifier"]
    assert not (out / "labelmap.nii.gz").exists()
    code, _, err = _run(["analyze", str(covid_nifti), "-o", str(tmp_path / "o2"), "--models-dir", str(tiny_models),
                         "--classifier", "test-classifier@9.9", "--progress", "none"], capsys)
    assert code == 3 and "9.9" in err and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("method", ["threshold", "model"])
def test_a_scan_showing_little_lung_is_flagged(method, tiny_models, tmp_path, capsys):
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    image = make_phantom("normal", 3, size=(96, 96, 64)).image[:, :, 0:14]  # diaphragm domes and abdomen, 62 mm
    path = tmp_path / "bases.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    code, stdout, err = _run(["analyze", str(path), "-o", str(out), "--method", method, "--models-dir",
                              str(tiny_models), "--segment", "always", "--device", "cpu", "--progress", "plain"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    notes = [n for n in report["input"]["notes"] if "mL of lung" in n]
    assert len(notes) == 1 and "may not cover the chest" in notes[0], notes
    assert notes[0] in report["warnings"]
    total = float(notes[0].split(" mL")[0].split()[-1])
    assert 0 < total < 400
    assert "may not cover the chest" in stdout + err
    assert "WARNING only" in stdout  # in the summary too


def test_a_chest_scan_is_not_flagged(covid_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold", "--progress", "none"],
                capsys)[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert not any("mL of lung" in n for n in report["input"]["notes"]) and report["warnings"] == []


@pytest.mark.parametrize("old_outputs", [False, True], ids=["new-folder", "force-over-old-outputs"])
def test_a_failure_inside_the_write_stage_leaves_the_folder_as_it_was(covid_nifti, tmp_path, capsys, monkeypatch,
                                                                      old_outputs):
    # The last writer (report.json, after the labelmaps and the preview were written) dies half-way: a run
    # that wrote straight into the output folder would leave those files, or a mix of old and new, behind.
    import errno

    from CovidCTAnalysisLib.errors import OutputError
    from CovidCTAnalysisLib.results import outputs

    out = tmp_path / "out"
    args = ["analyze", str(covid_nifti), "-o", str(out), "--method", "threshold", "--progress", "none"]
    if old_outputs:
        assert _run(args + ["--segment", "never"], capsys)[0] == 0
        (out / "notes.txt").write_text("the user's own file")
        args.append("--force")
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None

    def dies_half_way(obj, path):
        Path(path).write_text('{"classification": ')
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_json", dies_half_way)
    code, _, err = _run(args, capsys)
    assert code == OutputError.exit_code and "No space left on device" in err, err
    after = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None
    assert after == before  # no folder when there was none; the old outputs byte for byte otherwise
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if old_outputs else [])  # no temp left
