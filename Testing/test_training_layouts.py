"""Training end to end, one public dataset layout at a time.

Each test builds a tiny fake dataset in the layout from synthetic phantoms, trains one
epoch, exports the model folder, installs it and runs ``covidct analyze`` with it.
The networks are tiny-input/low-resolution so this runs on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fake_datasets import (
    write_covid19_20,
    write_covid_ct_md,
    write_covid_ct_seg_zenodo,
    write_image,
    write_kaggle_class_folders,
)

pytestmark = pytest.mark.slow  # trains networks

SIZE = (64, 64, 48)
SEEDS = (0, 1, 2)
KINDS = ("normal", "pneumonia", "covid")
CLS_ARGS = ["--epochs", "1", "--input-size", "32", "--max-slices-per-case", "3", "--batch-size", "4",
            "--threads", "2", "--device", "cpu", "--optimizer", "sgd", "--lr", "1e-3"]
SEG_ARGS = ["--epochs", "1", "--spacing", "8,8,8", "--roi", "32,32,32", "--batch-size", "2", "--threads", "2",
            "--device", "cpu", "--channels", "4,8,16", "--strides", "2,2", "--num-res-units", "1", "--margin-mm", "5"]


@pytest.fixture(scope="module")
def phantoms():
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    return {(k, s): make_phantom(k, s, size=SIZE) for s in SEEDS for k in KINDS}


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _export_install(run_dir: Path, model_id: str, root: Path) -> dict:
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    from training.export import export

    meta = export(run_dir, run_dir.parent / f"{model_id}-folder", model_id, "0.0.1", demo=True)
    installed = ModelRegistry(root).install(run_dir.parent / f"{model_id}-folder")
    assert installed.sha256 == meta.sha256
    return json.loads((run_dir.parent / f"{model_id}-folder" / "metadata.json").read_text())


def _analyze(image: Path, out: Path, root: Path, classifier: str, segmenter: str | None) -> dict:
    from CovidCTAnalysisLib.cli.main import main

    args = ["analyze", str(image), "--output-dir", str(out), "--models-dir", str(root), "--classifier", classifier,
            "--progress", "none", "--device", "cpu"]
    args += ["--segment", "always", "--segmenter", segmenter] if segmenter else ["--segment", "never"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    ids = [m["id"] for m in report["models"]]
    assert classifier in ids and (segmenter is None or segmenter in ids)
    assert all(m["demo"] for m in report["models"])
    return report


@pytest.fixture(scope="module")
def classifier_id(phantoms, registry_root, tmp_path_factory) -> str:
    """The phantoms layout (d): also the classifier every segmenter test analyses with."""
    from training import train_classifier

    work = tmp_path_factory.mktemp("cls_phantoms")
    assert train_classifier.main(["--dataset", "phantoms", "--phantom-seeds", "0-2", "--phantom-spacing", "7",
                                  "--output-dir", str(work / "run"), *CLS_ARGS]) == 0
    meta = _export_install(work / "run", "t-cls-phantoms", registry_root)
    assert meta["demo"] is True and "phantoms" in meta["trained_on"]
    split = meta["training_data"]["split"]
    # all kinds of one phantom seed (one synthetic patient) are on the same side of the split
    for seed in SEEDS:
        sides = {("train" if f"phantom-{k}-{seed}" in split["train"] else "val") for k in KINDS}
        assert len(sides) == 1
    return "t-cls-phantoms"


@pytest.fixture(scope="module")
def covid_image(phantoms, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "covid.nii.gz"
    sitk.WriteImage(phantoms[("covid", 2)].image, str(path))
    return path


def test_phantoms_layout_classifier_analyze(classifier_id, registry_root, covid_image, tmp_path):
    report = _analyze(covid_image, tmp_path / "out", registry_root, classifier_id, None)
    assert report["classification"]["label"] in ("Normal", "Pneumonia", "COVID-19")


def test_folders_layout(phantoms, registry_root, covid_image, tmp_path):
    from training import train_classifier
    from training.classifier_data import folders_cases

    root = write_kaggle_class_folders(tmp_path / "kaggle", phantoms)
    cases = folders_cases(root)
    assert len(cases) == 9 and all(len(c.slice_files) > 1 for c in cases)  # slices grouped by patient
    run = tmp_path / "run"
    assert train_classifier.main(["--dataset", "folders", "--data-root", str(root), "--mode", "gray_png",
                                  "--windows=-600,1500", "--output-dir", str(run), *CLS_ARGS]) == 0
    meta = _export_install(run, "t-cls-folders", registry_root)
    assert meta["preprocessing"]["mode"] == "gray_png" and meta["preprocessing"]["input_size"] == 32
    split = meta["training_data"]["split"]
    assert not set(split["train"]) & set(split["val"])
    _analyze(covid_image, tmp_path / "out", registry_root, "t-cls-folders", None)


def test_covid_ct_md_layout_dicom_index_and_slice_labels(phantoms, registry_root, covid_image, tmp_path):
    from training import train_classifier
    from training.classifier_data import covid_ct_md_cases
    from training.classifier_slices import volume_slices

    root = write_covid_ct_md(tmp_path / "COVID-CT-MD", phantoms)
    cases = covid_ct_md_cases(root)
    assert len(cases) == 9
    cov = next(c for c in cases if c.patient_id == "cov001")
    picked = volume_slices(cov, {"input_size": 32})
    truth = sitk.GetArrayFromImage(phantoms[("covid", 1)].truth)
    # lesion slices train COVID-19 and the clear ones Normal: the superior-first order is undone
    assert {2, 0} <= set(picked.y) <= {2, 0}
    assert all((truth[z] == 3).any() == (y == 2) for z, y in zip(picked.z, picked.y, strict=True))
    assert set(volume_slices(cov, {"input_size": 32}, clear_slices="skip").y) == {2}
    run = tmp_path / "run"
    assert train_classifier.main(["--dataset", "covid-ct-md", "--data-root", str(root), "--output-dir", str(run),
                                  *CLS_ARGS]) == 0
    _export_install(run, "t-cls-ctmd", registry_root)
    _analyze(covid_image, tmp_path / "out", registry_root, "t-cls-ctmd", None)


def test_nifti_csv_layout(phantoms, registry_root, covid_image, tmp_path):
    from training import train_classifier

    rows = [["image", "class", "patient_id"]]
    for (kind, seed), ph in phantoms.items():
        sitk.WriteImage(ph.image, str(tmp_path / f"{kind}{seed}.nii.gz"))
        rows.append([f"{kind}{seed}.nii.gz", {"covid": "COVID-19", "pneumonia": "CAP", "normal": "Normal"}[kind],
                     f"{kind}{seed}"])
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = tmp_path / "run"
    assert train_classifier.main(["--dataset", "nifti-csv", "--csv", str(tmp_path / "cases.csv"),
                                  "--output-dir", str(run), *CLS_ARGS]) == 0
    meta = _export_install(run, "t-cls-csv", registry_root)
    assert meta["training_data"]["dataset"]["patients"] == {"Normal": 3, "Pneumonia": 3, "COVID-19": 3}
    _analyze(covid_image, tmp_path / "out", registry_root, "t-cls-csv", None)


def _seg_roundtrip(args: list[str], model_id: str, classifier_id: str, registry_root: Path, covid_image: Path,
                   tmp_path: Path) -> dict:
    from training import train_segmenter

    run = tmp_path / "run"
    assert train_segmenter.main([*args, "--output-dir", str(run), *SEG_ARGS]) == 0
    assert (run / "checkpoint_best.pt").is_file() and (run / "tensorboard").is_dir()
    meta = _export_install(run, model_id, registry_root)
    report = _analyze(covid_image, tmp_path / "out", registry_root, classifier_id, model_id)
    assert report["segments"]
    return meta


def test_covid_ct_seg_zenodo_layout(phantoms, classifier_id, registry_root, covid_image, tmp_path):
    from training.segmenter_data import covid_ct_seg_cases, read_image_hu

    root = write_covid_ct_seg_zenodo(tmp_path / "zenodo", phantoms, SEEDS)
    cases = covid_ct_seg_cases(root)
    radio = next(c for c in cases if c.case_id.startswith("radiopaedia"))
    hu = sitk.GetArrayFromImage(read_image_hu(radio))
    assert hu.min() < -1000 and radio.notes  # mapped back to HU
    meta = _seg_roundtrip(["--dataset", "covid-ct-seg", "--data-root", str(root), "--optimizer", "adam",
                           "--no-lesion-edges"], "t-seg-zenodo", classifier_id, registry_root, covid_image, tmp_path)
    assert meta["labels"] == {"0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"}
    assert meta["preprocessing"]["lesion_edges"] is False  # a model trained on real outlines keeps its own edges
    assert meta["training"]["lr"] == 1e-4  # the paper's rate for 4 labels


def test_covid_ct_seg_kaggle_layout_and_side_check(phantoms, classifier_id, registry_root, covid_image, tmp_path):
    from training.segmenter_data import covid_ct_seg_cases, read_label

    root = tmp_path / "kaggle"
    rows = [["ct_scan", "lung_mask", "infection_mask", "lung_and_infection_mask"]]
    for i, seed in enumerate(SEEDS):
        ph = phantoms[("covid", seed)]
        truth = ph.truth
        if i == 0:  # a case whose "left" label sits on the patient's right
            arr = sitk.GetArrayFromImage(truth)
            swapped = arr.copy()
            swapped[arr == 1], swapped[arr == 2] = 2, 1
            truth = sitk.GetImageFromArray(swapped)
            truth.CopyInformation(ph.truth)
        write_image(ph.image, root / "ct_scans" / f"coronacases_org_{i + 1:03d}.nii")
        write_image(truth, root / "lung_and_infection_mask" / f"coronacases_{i + 1:03d}.nii")
        base = "../input/covid19-ct-scans"
        rows.append([f"{base}/ct_scans/coronacases_org_{i + 1:03d}.nii", "", "",
                     f"{base}/lung_and_infection_mask/coronacases_{i + 1:03d}.nii"])
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cases = covid_ct_seg_cases(root)
    assert [c.case_id for c in cases] == ["coronacases_001", "coronacases_002", "coronacases_003"]
    with pytest.warns(UserWarning, match="swapped"):
        read_label(cases[0], 4, sides="warn")
    fixed = sitk.GetArrayFromImage(read_label(cases[0], 4, sides="fix"))
    assert np.array_equal(fixed, sitk.GetArrayFromImage(phantoms[("covid", 0)].truth))
    _seg_roundtrip(["--dataset", "covid-ct-seg", "--data-root", str(root), "--sides", "fix", "--optimizer", "adam"],
                   "t-seg-kaggle", classifier_id, registry_root, covid_image, tmp_path)


def test_covid19_20_layout_two_labels(phantoms, classifier_id, registry_root, covid_image, tmp_path):
    root = write_covid19_20(tmp_path / "COVID-19-20", phantoms, SEEDS)
    meta = _seg_roundtrip(["--dataset", "covid-19-20", "--data-root", str(root)], "t-seg-c1920",
                          classifier_id, registry_root, covid_image, tmp_path)
    assert meta["labels"] == {"0": "background", "1": "Lesion"}
    assert meta["training"]["lr"] == 5e-4 and meta["training"]["momentum"] == 0.95  # paper, 2 labels


def test_phantoms_layout_segmenter_evaluate_records_metrics(classifier_id, registry_root, covid_image, tmp_path):
    from training import evaluate

    meta = _seg_roundtrip(["--dataset", "phantoms", "--phantom-seeds", "0-2", "--phantom-kinds", "covid",
                           "--phantom-spacing", "7", "--optimizer", "adam"], "t-seg-phantoms", classifier_id,
                          registry_root, covid_image, tmp_path)
    assert meta["eval_metrics"]["status"].startswith("not evaluated")
    folder = tmp_path / "t-seg-phantoms-folder"
    assert evaluate.main(["--model-dir", str(folder), "--dataset", "phantoms", "--phantom-seeds", "50",
                          "--phantom-kinds", "covid", "--phantom-spacing", "7", "--threads", "2",
                          "--device", "cpu"]) == 0
    m = json.loads((folder / "metadata.json").read_text())["eval_metrics"]
    assert set(m["per_class"]) == {"Left lung", "Right lung", "Lesion"}
    assert 0.0 <= m["per_class"]["Left lung"]["dice_mean"] <= 1.0 and m["n_cases"] == 1
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    ModelRegistry(tmp_path / "again").install(folder)  # still a valid model folder (sha256 unchanged)
