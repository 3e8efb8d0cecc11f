"""COVID-CT-MD smoke runs on ../shared/data/covid-ct-md (three real cases: not a claim of accuracy).

The NIfTI+CSV path uses all three cases with labels.json's slice labels; the DICOM-series
path (class folders, Index.csv, Slice-level-labels.npy in the upstream superior-first order)
uses P001, the one case with DICOM here. Both must pick only the radiologists' infection
slices for the COVID-19 case.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SMOKE = ["--epochs", "1", "--input-size", "32", "--max-slices-per-case", "3", "--batch-size", "3",
         "--optimizer", "sgd", "--device", "cpu", "--threads", "2"]


@pytest.fixture(scope="module")
def ctmd(shared_data) -> tuple[Path, dict]:
    root = shared_data / "covid-ct-md"
    if not (root / "labels.json").is_file():
        pytest.skip(f"{root / 'labels.json'} is absent")
    return root, json.loads((root / "labels.json").read_text())


def test_nifti_csv_path_on_three_real_cases(ctmd, tmp_path):
    from training import train_classifier
    from training.classifier_data import nifti_csv_cases
    from training.classifier_slices import volume_slices

    root, labels = ctmd
    rows = [["image", "class", "patient_id", "slice_labels"]]
    for cid, case in labels["cases"].items():
        npy = ""
        if case.get("slice_infection_label_by_nifti_z"):
            npy = f"{cid}.npy"
            np.save(tmp_path / npy, np.array(case["slice_infection_label_by_nifti_z"], dtype=np.uint8))
        rows.append([str(root / case["file"]), case["class"], cid, npy])
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cases = nifti_csv_cases(tmp_path / "cases.csv")
    assert [c.class_index for c in cases] == [2, 1, 0]  # COVID-19, CAP -> Pneumonia, Normal
    p001 = volume_slices(cases[0], {"input_size": 32})
    positive = labels["cases"]["P001"]["slice_infection_label_by_nifti_z"]
    assert set(p001.y) == {0, 2}  # infection slices train COVID-19, the radiologists' clear slices Normal
    assert all((positive[z] == 1) == (y == 2) for z, y in zip(p001.z, p001.y, strict=True))
    out = tmp_path / "run"
    assert train_classifier.main(["--dataset", "nifti-csv", "--csv", str(tmp_path / "cases.csv"),
                                  "--output-dir", str(out), *SMOKE]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["patients"] == {"Normal": 1, "Pneumonia": 1, "COVID-19": 1}
    assert (out / "checkpoint_best.pt").is_file()


def test_dicom_series_path_with_index_and_superior_first_labels(ctmd, tmp_path):
    from training import train_classifier
    from training.classifier_data import covid_ct_md_cases
    from training.classifier_slices import volume_slices

    root, labels = ctmd
    if not (root / "dicom" / "P001").is_dir():
        pytest.skip("dicom/P001 is absent")
    data = tmp_path / "COVID-CT-MD"
    (data / "COVID-19 subjects").mkdir(parents=True)
    (data / "CAP subjects").mkdir()
    (data / "Normal subjects").mkdir()
    (data / "COVID-19 subjects" / "P001").symlink_to(root / "dicom" / "P001")
    with open(data / "Index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Label Index", "Diagnosis", "Relative Path", "Folder/ID"],
                                 [0, "COVID-19", "./COVID-19/", "P001"]])
    by_z = np.array(labels["cases"]["P001"]["slice_infection_label_by_nifti_z"], dtype=np.uint8)
    upstream = np.zeros((1, 200), dtype=np.uint8)
    upstream[0, :by_z.size] = by_z[::-1]  # as published: index 0 = most superior slice
    np.save(data / "Slice-level-labels.npy", upstream)
    cases = covid_ct_md_cases(data)
    assert [c.patient_id for c in cases] == ["P001"] and cases[0].labels_superior_first
    picked = volume_slices(cases[0], {"input_size": 32})
    assert set(picked.y) == {0, 2} and all((by_z[z] == 1) == (y == 2) for z, y in zip(picked.z, picked.y, strict=True))
    out = tmp_path / "run"
    assert train_classifier.main(["--dataset", "covid-ct-md", "--data-root", str(data), "--output-dir", str(out),
                                  *SMOKE]) == 0
    assert json.loads((out / "run.json").read_text())["training"]["slices"]["train"] == 5  # 3 infection + 2 clear slices
