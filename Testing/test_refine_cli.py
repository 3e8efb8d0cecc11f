"""``covidct refine``: a result corrected with clicks (files, report, DICOM SEG), and every refusal leaving the
result as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.cli.main import main
from CovidCTAnalysisLib.constants import LESION

SIZE = (80, 72, 32)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A temp registry with a tiny interactive model whose weights say "lesion" everywhere (zero weights, a
    lesion bias), so a click's effect is known: every lung voxel of its ROI becomes lesion."""
    from CovidCTAnalysisLib import INTENDED_USE
    from CovidCTAnalysisLib.models.folder import save_model_folder
    from CovidCTAnalysisLib.models.networks import build_interactive
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    kwargs = {"in_channels": 3, "channels": [4, 8], "strides": [2], "num_res_units": 1}
    module = build_interactive(**kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        last_bias = [p for name, p in module.named_parameters() if name.endswith("bias") and p.shape == (2,)][-1]
        last_bias.copy_(torch.tensor([0.0, 5.0]))
    meta = {"id": "test-interactive", "version": "0.0.1", "task": "interactive", "demo": True, "eval_metrics": {},
            "intended_use": INTENDED_USE, "trained_on": "nothing: test weights", "labels": {"0": "background",
                                                                                         "1": "Lesion"},
            "architecture": {"name": "monai.UNet", "kwargs": kwargs}, "click_simulation": {"initial": "none"},
            "preprocessing": {"spacing_mm": [4.0, 4.0, 4.0], "roi_size": [8, 8, 8], "guidance_sigma_mm": 6.0,
                              "channels": ["image", "positive", "negative"]}}
    work, root = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("models")
    save_model_folder(module, meta, work / "m")
    ModelRegistry(root).install(work / "m")
    return root


def _analyze(src: Path, out: Path, capsys) -> None:
    assert main(["analyze", str(src), "-o", str(out), "--method", "threshold", "--segment", "always",
                 "--progress", "none"]) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    from CovidCTAnalysisLib.phantom.generator import make_phantom
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    ph = make_phantom("covid", 5, size=SIZE)
    folder = tmp_path_factory.mktemp("case")
    write_dicom_series(ph.image, folder / "dcm")
    out = folder / "result"
    assert main(["analyze", str(folder / "dcm"), "-o", str(out), "--method", "threshold", "--segment", "always",
                 "--progress", "none"]) == 0
    return out


@pytest.fixture()
def result(analysed, tmp_path) -> Path:
    """A fresh copy of the analysis (the input scan stays where the report says)."""
    dst = tmp_path / "result"
    shutil.copytree(analysed, dst)
    return dst


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def lung_point(result: Path, label: int = 1) -> list[float]:
    lab = sitk.ReadImage(str(result / "labelmap.nii.gz"))
    zz, yy, xx = np.nonzero(sitk.GetArrayViewFromImage(lab) == label)
    k = len(zz) // 2
    return list(lab.TransformIndexToPhysicalPoint((int(xx[k]), int(yy[k]), int(zz[k]))))


def run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_refine_updates_labelmap_segmentation_report_and_dicom_seg_in_place(result, registry, capsys):
    import pydicom

    before = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "labelmap.nii.gz")))
    old_report = json.loads((result / "report.json").read_text())
    point = ",".join(f"{v:.2f}" for v in lung_point(result))
    code, out, err = run(["refine", str(result), "--add-point", point, "--models-dir", str(registry)], capsys)
    assert code == 0, err
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "labelmap.nii.gz")))
    changed = after != before
    assert changed.any() and (after[changed] == LESION).all()
    assert np.array_equal(after[~np.isin(before, (1, 2, 3))], before[~np.isin(before, (1, 2, 3))])
    rep = json.loads((result / "report.json").read_text())
    assert rep["edited"] is True
    assert rep["interactive"]["model"]["id"] == "test-interactive" and rep["interactive"]["model"]["sha256"]
    assert rep["interactive"]["clicks"][0]["kind"] == "add" and rep["interactive"]["changed_voxels"] == changed.sum()
    lesion = next(s for s in rep["segments"] if s["label"] == LESION)
    old_lesion = next(s for s in old_report["segments"] if s["label"] == LESION)
    assert lesion["volume_ml"] > old_lesion["volume_ml"]
    assert rep["statistics"]["lesion_percent"]["total"] > old_report["statistics"]["lesion_percent"]["total"]
    assert any(m["task"] == "interactive" for m in rep["models"])
    import slicerio

    seg = slicerio.read_segmentation(str(result / "segmentation.seg.nrrd"))
    assert np.array_equal(np.asarray(seg["voxels"]).transpose(2, 1, 0), after)
    ds = pydicom.dcmread(result / "segmentation.dcm")
    assert "corrected" in ds.SeriesDescription
    types = {s.SegmentLabel: s.SegmentAlgorithmType for s in ds.SegmentSequence}
    assert types["Lesion"] == "SEMIAUTOMATIC" and types["Left lung"] == "AUTOMATIC"
    assert "1 click" in out
    # a second session keeps the first session's clicks
    code, _, err = run(["refine", str(result), "--remove-point", point, "--models-dir", str(registry)], capsys)
    assert code == 0, err
    clicks = json.loads((result / "report.json").read_text())["interactive"]["clicks"]
    assert [c["kind"] for c in clicks] == ["add", "remove"]


def test_markups_file_and_output_dir_leave_the_result_as_it_was(result, registry, tmp_path, capsys):
    x, y, z = lung_point(result, 2)
    mrk = tmp_path / "add.mrk.json"
    mrk.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"label": "F-1", "position": [-x, -y, z], "positionStatus": "defined"},
        {"label": "F-2", "position": [9999, 0, 0], "positionStatus": "preview"}]}]}))
    before = digest(result)
    new = tmp_path / "corrected"
    code, _, err = run(["refine", str(result), "--add", str(mrk), "-o", str(new), "--models-dir", str(registry)],
                       capsys)
    assert code == 0, err
    assert digest(result) == before
    rep = json.loads((new / "report.json").read_text())
    assert rep["interactive"]["clicks"][0]["source"] == "add.mrk.json:F-1"
    assert rep["interactive"]["clicks"][0]["lps_mm"] == pytest.approx([x, y, z], abs=1e-3)


def _refused(args, result, registry, capsys, match: str, code_expected: int = 2) -> None:
    before = digest(result)
    code, _, err = run(["refine", str(result), *args, "--models-dir", str(registry)], capsys)
    assert code == code_expected and match in err, err
    assert digest(result) == before
    assert not [p for p in result.parent.iterdir() if p.name.startswith(".")], "no temp folder left"


def test_refusals_leave_the_result_as_it_was(result, registry, tmp_path, capsys):
    _refused(["--add-point", "9000,0,0"], result, registry, capsys, "lies outside the image")
    _refused(["--remove-point", "1,2"], result, registry, capsys, "expected three numbers")
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{not json")
    _refused(["--add", str(bad)], result, registry, capsys, "not valid JSON")
    body = ",".join(f"{v:.2f}" for v in lung_point(result, 0))
    _refused(["--add-point", body], result, registry, capsys, f"add click --add-point #1 at LPS ({float(body.split(',')[0]):.1f}, ")
    _refused(["--add-point", body], result, registry, capsys, "outside the lungs")
    _refused([], result, registry, capsys, "no clicks given")


def test_not_an_analysis_output_or_input_gone_is_refused(result, registry, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["refine", str(empty), "--add-point", "0,0,0", "--models-dir", str(registry)], capsys)
    assert code == 2 and "not an analysis output" in err
    rep = json.loads((result / "report.json").read_text())
    rep["input"]["path"] = str(tmp_path / "gone")
    (result / "report.json").write_text(json.dumps(rep))
    _refused(["--add-point", ",".join(map(str, lung_point(result)))], result, registry, capsys, "is gone")


def test_no_interactive_model_installed_is_refused(result, tmp_path, capsys):
    code, _, err = run(["refine", str(result), "--add-point", ",".join(map(str, lung_point(result))),
                        "--models-dir", str(tmp_path / "none")], capsys)
    assert code == 3 and "interactive" in err
