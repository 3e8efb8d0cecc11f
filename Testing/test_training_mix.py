"""The classifier's mixed dataset ``--dataset phantoms,hybrids,weak`` (training/classifier_mix.py).

Real-data tests use the COVID-CT-MD sample of ../shared/data and skip when it is absent. The hybrid cases are
made once per module (covid lesions, seed 0, P001 left out) and reused by the end-to-end run through the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from CovidCTAnalysisLib.constants import CLASS_NAMES

NORMAL, PNEUMONIA, COVID = (CLASS_NAMES.index(c) for c in ("Normal", "Pneumonia", "COVID-19"))
TINY = ["--epochs", "1", "--input-size", "32", "--max-slices-per-case", "3", "--batch-size", "8",
        "--optimizer", "sgd", "--device", "cpu", "--threads", "1"]


def _prep() -> dict:
    from training.train_classifier import build_parser, preprocessing_from_args

    return preprocessing_from_args(build_parser().parse_args(["--dataset", "weak", "--output-dir", "x", *TINY]))


def test_parts_and_exclude_refused_clearly(tmp_path):
    from training import train_classifier
    from training.classifier_mix import parse_parts

    assert parse_parts("phantoms, weak") == ["phantoms", "weak"]
    for bad in ("phantoms,foo", "weak,weak", ","):
        with pytest.raises(ValueError, match="expected a comma-separated list"):
            parse_parts(bad)
    with pytest.raises(ValueError, match=r"unknown real patient\(s\) \['X001'\]"):
        train_classifier.main(["--dataset", "phantoms,weak", "--real-data", str(tmp_path), "--real-exclude",
                               "P001,X001", "--output-dir", str(tmp_path / "o"), *TINY])
    with pytest.raises(SystemExit, match="need --real-data"):
        train_classifier.main(["--dataset", "phantoms,hybrids", "--output-dir", str(tmp_path / "o"), *TINY])


@pytest.fixture(scope="module")
def real_root(shared_data) -> Path:
    if not (shared_data / "covid-ct-md" / "labels.json").is_file():
        pytest.skip(f"{shared_data / 'covid-ct-md' / 'labels.json'} is absent")
    return shared_data


@pytest.mark.realdata
def test_weak_slices_take_the_radiologists_classes(real_root):
    from training.classifier_mix import weak_cases
    from training.classifier_slices import volume_slices

    labels = json.loads((real_root / "covid-ct-md" / "labels.json").read_text())["cases"]
    cases = {c.group: c for c in weak_cases(real_root)}
    assert sorted(cases) == ["real-P001", "real-cap001", "real-normal001"]
    assert {g: CLASS_NAMES[c.class_index] for g, c in cases.items()} == \
        {"real-P001": "COVID-19", "real-cap001": "Pneumonia", "real-normal001": "Normal"}  # CAP -> Pneumonia
    for group, own in (("real-P001", COVID), ("real-cap001", PNEUMONIA)):
        s = volume_slices(cases[group], _prep(), max_slices=4)
        z_labels = labels[group[5:]]["slice_infection_label_by_nifti_z"]
        assert own in s.y and NORMAL in s.y
        for z, y in zip(s.z, s.y, strict=True):  # labelled slices: the patient's class; clear ones: Normal
            assert y == (own if z_labels[z] == 1 else NORMAL), (group, z, y)
    s = volume_slices(cases["real-normal001"], _prep(), max_slices=4)
    assert s.y and set(s.y) == {NORMAL}
    assert "real-P001" not in {c.group for c in weak_cases(real_root, frozenset({"P001"}))}


@pytest.fixture(scope="module")
def hybrid_cache(real_root, tmp_path_factory) -> tuple[Path, list]:
    from training.classifier_mix import hybrid_cases

    cache = tmp_path_factory.mktemp("hybrid_cache")
    return cache, hybrid_cases(real_root, ["covid"], [0], cache, frozenset({"P001"}))


@pytest.mark.realdata
@pytest.mark.slow
def test_hybrid_slices_lesion_covid_clear_normal_and_exclude(hybrid_cache):
    import SimpleITK as sitk

    from training.classifier_slices import volume_slices

    _, cases = hybrid_cache
    assert cases and {c.group for c in cases} == {"real-cap001", "real-normal001"}  # P001 left out
    assert all(CLASS_NAMES[c.class_index] == "COVID-19" for c in cases)
    case = next(c for c in cases if c.group == "real-normal001")
    s = volume_slices(case, _prep(), lung_source="truth", max_slices=6)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case.truth))) == 3
    lung = sitk.GetArrayFromImage(sitk.ReadImage(str(case.truth))) > 0
    assert COVID in s.y and NORMAL in s.y
    for z, y in zip(s.z, s.y, strict=True):
        if y == COVID:  # a lesion slice: lesion covers a clear share of its lung
            assert lesion[z].sum() >= 0.01 * lung[z].sum() > 0, z
        else:
            assert y == NORMAL and not lesion[z].any(), z


@pytest.mark.realdata
@pytest.mark.slow
def test_one_epoch_on_phantoms_hybrids_weak_without_p001(hybrid_cache, real_root, tmp_path):
    from training import train_classifier

    cache, _ = hybrid_cache
    out = tmp_path / "run"
    assert train_classifier.main(["--dataset", "phantoms,hybrids,weak", "--real-data", str(real_root),
                                  "--real-exclude", "P001", "--hybrid-kinds", "covid", "--hybrid-seeds", "0",
                                  "--phantom-seeds", "0-1", "--phantom-spacing", "9", "--cache-dir", str(cache),
                                  "--output-dir", str(out), *TINY]) == 0
    run = json.loads((out / "run.json").read_text())
    mix = run["dataset"]["mix"]
    assert mix["real_excluded"] == ["P001"]
    assert set(mix["parts"]) == {"phantoms", "hybrids", "weak"}
    assert mix["parts"]["weak"]["patients"] == ["real-cap001", "real-normal001"]
    assert mix["parts"]["weak"]["cases"] == 2 and mix["parts"]["hybrids"]["slices"]["COVID-19"] > 0
    every_id = run["split"]["train"] + run["split"]["val"]
    assert every_id and not [i for i in every_id if "P001" in i]
    real = [i for i in every_id if i.startswith(("real-", "hybrid-"))]
    assert real and set(real) <= set(run["split"]["train"])  # real patients always train
    per_class = run["training"]["slices"]["train_per_class"]
    counted = {k: sum(p["slices"][k] for p in mix["parts"].values()) for k in CLASS_NAMES}
    val_slices = run["training"]["slices"]["val"]
    assert sum(counted.values()) == sum(per_class.values()) + val_slices
