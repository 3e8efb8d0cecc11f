"""The demo recipe with and without real CTs, and the leave-one-patient-out benchmark (issue 10).

Recipe: ``training.demo.training_args`` puts ``--real-exclude`` in both models' arguments of a fold and never in
the phantoms-only recipe; a phantoms-only demo model says so in its metadata and in ``covidct models show``.
Benchmark: the aim checker marks a missed aim as missed; one ``--quick`` fold runs end to end on the real CTs
(skips without ``../shared/data``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import eval_real_lopo as lopo
from training import demo
from training.real_cases import RealCase


def _value(args: list[str], flag: str) -> str | None:
    """The last value of ``flag`` in an argument list (argparse keeps the last)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    return values[-1] if values else None


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_recipe_leaves_the_fold_patient_out_and_phantoms_only_has_no_real_flags(kind, tmp_path):
    fold = demo.training_args(kind, tmp_path, ["P001"], quick=True)
    assert _value(fold, "--real-exclude") == "P001"
    assert _value(fold, "--real-data") == str(tmp_path)
    assert _value(fold, "--dataset") == "phantoms,hybrids,weak"
    full = demo.training_args(kind, tmp_path)
    assert "--real-exclude" not in full and _value(full, "--dataset") == "phantoms,hybrids,weak"
    phantoms_only = demo.training_args(kind)
    assert "--real-exclude" not in phantoms_only and "--real-data" not in phantoms_only
    assert _value(phantoms_only, "--dataset") == "phantoms"
    # the same recipe as make demo's (seeds and settings): only the data flags differ
    assert _value(fold, "--seed") == _value(phantoms_only, "--seed") == "0"
    assert _value(full, "--phantom-seeds") == demo.TRAIN_SEEDS[kind]


def test_recipe_refuses_a_fold_without_real_data_and_an_unknown_patient(tmp_path):
    with pytest.raises(ValueError, match="without real_data"):
        demo.training_args("classifier", None, ["P001"])
    with pytest.raises(ValueError, match="P999"):
        demo.training_args("segmenter", tmp_path, ["P999"])


def test_real_data_default_and_refusal(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDCT_SHARED_DATA", raising=False)
    monkeypatch.setattr(demo, "REPO_ROOT", tmp_path / "repo")
    assert demo.default_real_data() is None  # no ../shared/data beside the repo: phantoms only
    shared = tmp_path / "shared" / "data"
    (shared / "covid-ct-md").mkdir(parents=True)
    (shared / "covid-ct-md" / "labels.json").write_text('{"cases": {}}')
    assert demo.default_real_data() == shared
    monkeypatch.setenv("COVIDCT_SHARED_DATA", str(tmp_path / "elsewhere"))
    assert demo.default_real_data() == tmp_path / "elsewhere"
    with pytest.raises(SystemExit, match="elsewhere.*covid-ct-md/labels.json"):
        demo.check_real_data(tmp_path / "elsewhere")


def test_phantoms_only_mix_is_described_as_phantoms_only():
    mix = demo.mix_of(demo.training_args("segmenter"), None)
    assert mix["real_patients"] == [] and mix["parts"] == ["phantoms"]
    trained_on, description = demo.describe_mix(mix)
    assert trained_on.startswith("DEMO: synthetic chest phantoms") and "phantoms only" in trained_on
    assert "phantoms only" in description and "real patients'" not in description


@pytest.mark.slow
def test_tiny_demo_models_say_phantoms_only_in_metadata_and_models_show(tiny_demo_models, capsys):
    from CovidCTAnalysisLib.cli.main import main as covidct
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    registry = ModelRegistry(tiny_demo_models.root)
    for model_id in (demo.CLASSIFIER_ID, demo.SEGMENTER_ID):
        meta = demo.installed(registry, model_id, tiny_demo_models.version)
        assert meta.demo is True
        mix = meta.raw["training_data"]["mix"]
        assert mix["real_patients"] == [] and mix["parts"] == ["phantoms"]
        assert "phantoms only" in meta.trained_on and "phantoms only" in meta.raw["description"]
        profile = meta.raw["input_profile"]  # recorded for the plausibility guard
        assert profile["lung_hu_p50"]["n"] == 9 and "9 training phantoms" in profile["source"]
        assert covidct(["models", "show", f"{model_id}@{tiny_demo_models.version}",
                        "--models-dir", str(tiny_demo_models.root)]) == 0
        assert "phantoms only" in capsys.readouterr().out


def _row(patient, label=None, probs=None, total=None, sens=None, spec=None, method="model"):
    return {"patient": patient, "method": method, "class": label, "probabilities": probs,
            "lesion_percent": {"left": None, "right": None, "total": total},
            "slices": {"sensitivity": sens, "specificity": spec}}


def test_aim_checker_marks_missed_aims_missed():
    normal_bad = lopo.check_aims(_row("normal001", "Pneumonia", {"Normal": 0.05, "Pneumonia": 0.92,
                                                                 "COVID-19": 0.03}, total=15.0))
    assert [a["met"] for a in normal_bad] == [False, False]
    normal_ok = lopo.check_aims(_row("normal001", "Pneumonia", {"Normal": 0.2, "Pneumonia": 0.89,
                                                                "COVID-19": 0.01}, total=3.0))
    assert [a["met"] for a in normal_ok] == [True, True]  # p below 0.9 and lesion at the limit pass
    assert not lopo.check_aims(_row("P001", "COVID-19", sens=0.95, spec=0.6))[0]["met"]  # specificity too low
    assert not lopo.check_aims(_row("P001", "COVID-19", sens=0.79, spec=0.9))[0]["met"]
    assert lopo.check_aims(_row("P001", "COVID-19", sens=0.8, spec=0.7))[0]["met"]
    assert not lopo.check_aims(_row("cap001", "COVID-19"))[0]["met"]
    assert lopo.check_aims(_row("cap001", "Pneumonia"))[0]["met"]
    assert lopo.check_aims(_row("P001", sens=0.1, spec=0.1, method="threshold")) == []  # aims are about the models


def test_score_row_counts_slices_at_50_mm3():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, 2:8, 2:8] = 1
    labels[1, 2:8, 2:8] = 3  # 36 voxels of 2 mm3 = 72 mm3: positive
    labels[2, 2:4, 2:4] = 3  # 4 voxels = 8 mm3: below 50 mm3, negative
    case = RealCase("P001", "COVID-19", Path("x.nii.gz"), (0, 1, 1, 0))
    report = {"classification": {"label": "COVID-19", "probabilities": {"COVID-19": 0.7}},
              "statistics": {"lesion_percent": {"left": 9.1, "right": None, "total": 9.1}}, "warnings": ["w"]}
    row = lopo.score_row(case, "unseen", "model", report, labels, (1.0, 1.0, 2.0))
    assert row["slices"]["sensitivity"] == 0.5 and row["slices"]["specificity"] == 1.0
    assert row["lesion_percent"]["total"] == 9.1 and row["warnings"] == ["w"]
    normal = lopo.score_row(RealCase("normal001", "Normal", Path("n.nii.gz"), None), "unseen", "model", report,
                            labels, (1.0, 1.0, 2.0))
    assert normal["slices"]["sensitivity"] is None and normal["slices"]["specificity"] == 0.75


def test_seen_only_refuses_without_installed_demo_models_or_with_skip_seen(tmp_path):
    with pytest.raises(SystemExit, match="leave nothing to evaluate"):
        lopo.main(["--seen-only", "--skip-seen", "--all-models-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"no demo models .* installed in {tmp_path}"):
        lopo.main(["--seen-only", "--all-models-dir", str(tmp_path)])
    assert not (tmp_path / "lopo").exists()  # refused before any fold work


@pytest.mark.parametrize("shown", ["unseen model", "all-data model", "threshold"])
def test_figure_draws_whichever_segmentation_was_kept(shown, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    titles = []
    monkeypatch.setattr(plt.Figure, "suptitle", lambda self, text, **kw: titles.append(text))
    labels = np.zeros((6, 16, 16), np.uint8)
    labels[:, 3:13, 3:8], labels[:, 3:13, 9:14], labels[2, 5:8, 4:7] = 1, 2, 3
    strips = {"radiologists": np.array([0, 0, 1, 1, 0, 0], bool), shown: np.array([0, 1, 1, 0, 0, 0], bool)}
    kept = {"P001": {"hu": np.full(labels.shape, -800.0), "labels": labels, "shown": shown, "strips": strips}}
    lopo.save_figure(kept, tmp_path / "f.png", quick=False)
    assert (tmp_path / "f.png").stat().st_size > 5_000
    assert ("never saw" in titles[0]) == (shown == "unseen model") and "not for diagnosis" in titles[0]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.timeout(1800)  # paints 6 hybrid cases and trains two quick models: ~5-13 min on 2 shared cores
def test_lopo_quick_fold_end_to_end(shared_data, tmp_path):
    if not (shared_data / demo.REAL_INDEX).is_file():
        pytest.skip(f"{shared_data / demo.REAL_INDEX} is absent")
    out = tmp_path / "results"
    assert lopo.main(["--quick", "--folds", "P001", "--skip-seen", "--real-data", str(shared_data),
                      "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)]) == 0
    result = json.loads((out / "eval_real_lopo.json").read_text())
    assert result["quick"] is True and result["folds"] == ["P001"]
    rows = {(r["models"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {("unseen", "model"), ("–", "threshold")}
    unseen = rows[("unseen", "model")]
    assert unseen["class"] in ("Normal", "Pneumonia", "COVID-19") and unseen["n_slices"] > 0
    assert unseen["aims"] and unseen["aims"][0]["aim"].startswith("slice sensitivity")
    # the fold's models never saw P001, and say so
    for kind in ("classifier", "segmenter"):
        raw = json.loads((tmp_path / "work" / "lopo" / "P001" / f"{kind}-model" / "metadata.json").read_text())
        mix = raw["training_data"]["mix"]
        assert mix["real_excluded"] == ["P001"] and "P001" not in mix["real_patients"] and mix["real_patients"]
        assert "P001" not in raw["trained_on"] and "cap001" in raw["trained_on"]
    assert "QUICK" in (out / "eval_real_lopo.md").read_text()
    assert (out / "eval_real_lopo.png").stat().st_size > 10_000
