"""Demo models: labelled DEMO, measured on unseen phantom seeds, and the recorded metrics are true.

The labelling and measurement tests run on every ``make test`` against tiny demo models made by
``make demo``'s own path (``tiny_models.py``: train, export, tune, evaluate, install). The recorded
``eval_metrics`` are checked against a recomputation through ``covidct analyze`` itself (class
probabilities, accuracy, confusion matrix; Dice and HD95 against the phantom truth as ``--reference``).
The quality targets (classifier accuracy >= 0.90 over the three classes; segmenter Dice >= 0.90 for each
lung and >= 0.70 for lesions) are about the real demo models and skip when ``make demo`` has not installed
them in ``$COVIDCT_MODELS_DIR``.
"""

from __future__ import annotations

import json

import pytest
from CovidCTAnalysisLib.constants import CLASS_NAMES

from training.demo import CLASSIFIER_ID, EVAL_SEEDS, SEGMENTER_ID, installed
from training.phantom_cache import parse_seeds, phantom_files

pytestmark = pytest.mark.slow  # the session's tiny demo models take about a minute to make


@pytest.fixture(scope="module")
def registry():
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    return ModelRegistry()


@pytest.fixture(scope="module")
def tiny_registry(tiny_demo_models):
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    return ModelRegistry(tiny_demo_models.root)


def _demo(registry, model_id):
    meta = installed(registry, model_id)
    if meta is None:
        pytest.skip(f"{model_id} is not installed in {registry.root}; run `make demo` first")
    return meta


def _phantom_training_seeds(dataset: dict) -> str:
    """The phantom seeds a model trained on: at the top for phantoms alone, in the phantoms part of a mix (real
    backgrounds too: ``parts`` for the classifier, ``mix.parts`` for the segmenter)."""
    for where in (dataset, dataset.get("parts", {}).get("phantoms", {}),
                  dataset.get("mix", {}).get("parts", {}).get("phantoms", {})):
        if "seeds" in where:
            return where["seeds"]
    raise AssertionError(f"no phantom training seeds recorded in {sorted(dataset)}")


def _labelled_and_measured(meta, eval_seeds: str):
    assert meta.demo is True and "DEMO" in meta.label_line()
    assert meta.trained_on.startswith("DEMO: synthetic chest phantoms")
    assert "not for diagnosis" in meta.raw["intended_use"].lower()
    assert meta.raw["git_commit"] and meta.raw["versions"]["torch"]
    m = meta.eval_metrics
    assert m["measured_by"] == "training/evaluate.py"
    measured_on = set(parse_seeds(m["dataset"]["seeds"]))
    assert measured_on == set(parse_seeds(eval_seeds))
    trained_on = set(parse_seeds(_phantom_training_seeds(meta.raw["training_data"]["dataset"])))
    assert trained_on and not measured_on & trained_on  # never seen in training
    return m


def _tiny(tiny_registry, tiny_demo_models, model_id):
    meta = installed(tiny_registry, model_id, tiny_demo_models.version)
    assert meta is not None, f"the tiny {model_id} was not installed"
    return meta


def _analyze(tiny_demo_models, image, out, *extra) -> dict:
    from CovidCTAnalysisLib.cli.main import main

    v = tiny_demo_models.version
    assert main(["analyze", str(image), "--output-dir", str(out), "--models-dir", str(tiny_demo_models.root),
                 "--classifier", f"{CLASSIFIER_ID}@{v}", "--device", "cpu", "--progress", "none", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def _eval_case_files(tiny_demo_models, case_id: str):
    _, kind, seed = case_id.rsplit("-", 2)
    return phantom_files(kind, int(seed), tiny_demo_models.cache, spacing=tiny_demo_models.phantom_spacing)


def test_tiny_demo_classifier_is_labelled_and_its_metrics_are_recomputed(tiny_registry, tiny_demo_models, tmp_path):
    meta = _tiny(tiny_registry, tiny_demo_models, CLASSIFIER_ID)
    m = _labelled_and_measured(meta, tiny_demo_models.eval_seeds)
    assert m["level"] == "patient" and m["n"] == 3 * len(parse_seeds(tiny_demo_models.eval_seeds)) == len(m["cases"])
    assert m["aggregation"] == meta.preprocessing["aggregation"]  # measured with the rule the model ships
    counts = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    for case in m["cases"]:
        report = _analyze(tiny_demo_models, _eval_case_files(tiny_demo_models, case["patient_id"]).image,
                          tmp_path / case["patient_id"], "--segment", "never")
        probabilities = [report["classification"]["probabilities"][c] for c in CLASS_NAMES]
        assert probabilities == pytest.approx(case["probabilities"], abs=1e-4)
        assert report["classification"]["label"] == case["predicted"]
        assert report["classification"]["n_slices"] == case["slices"]
        counts[CLASS_NAMES.index(case["true"])][CLASS_NAMES.index(case["predicted"])] += 1
    assert m["confusion_matrix"]["counts"] == counts
    assert m["accuracy"] == pytest.approx(sum(counts[k][k] for k in range(len(CLASS_NAMES))) / len(m["cases"]))


def test_tiny_demo_segmenter_is_labelled_and_its_metrics_are_recomputed(tiny_registry, tiny_demo_models, tmp_path):
    meta = _tiny(tiny_registry, tiny_demo_models, SEGMENTER_ID)
    m = _labelled_and_measured(meta, tiny_demo_models.eval_seeds)
    assert set(m["per_class"]) == {"Left lung", "Right lung", "Lesion"} and m["n_cases"] == len(m["cases"]) == 3
    per_class: dict[str, list[float]] = {name: [] for name in m["per_class"]}
    for case in m["cases"]:
        files = _eval_case_files(tiny_demo_models, case["case_id"])
        report = _analyze(tiny_demo_models, files.image, tmp_path / case["case_id"], "--segment", "always",
                          "--segmenter", f"{SEGMENTER_ID}@{tiny_demo_models.version}", "--reference", str(files.truth))
        for name in per_class:
            recorded = case[name]
            assert report["dice"][name] == pytest.approx(recorded["dice"], abs=1e-4) if recorded["dice"] is not None \
                else report["dice"][name] is None
            if recorded["hd95_mm"] is None:
                assert report["hd95_mm"][name] is None
            else:
                assert report["hd95_mm"][name] == pytest.approx(recorded["hd95_mm"], abs=1e-3)
            if recorded["truth_voxels"]:
                per_class[name].append(report["dice"][name])
    for name, dices in per_class.items():  # the means skip cases whose truth lacks the label
        assert m["per_class"][name]["n_cases"] == len(dices)
        assert m["per_class"][name]["dice_mean"] == pytest.approx(sum(dices) / len(dices), abs=1e-4)


def test_demo_classifier_is_labelled_and_measured(registry):
    meta = _demo(registry, CLASSIFIER_ID)
    m = _labelled_and_measured(meta, EVAL_SEEDS)
    assert m["level"] == "patient" and m["n"] == 3 * len(parse_seeds(EVAL_SEEDS))
    assert 0.0 <= m["accuracy"] <= 1.0 and len(m["confusion_matrix"]["counts"]) == 3


def test_demo_segmenter_is_labelled_and_measured(registry):
    meta = _demo(registry, SEGMENTER_ID)
    per = _labelled_and_measured(meta, EVAL_SEEDS)["per_class"]
    assert set(per) == {"Left lung", "Right lung", "Lesion"}


def test_demo_classifier_accuracy(registry):
    m = _demo(registry, CLASSIFIER_ID).eval_metrics
    assert m["accuracy"] >= 0.90, m["confusion_matrix"]


def test_demo_segmenter_dice(registry):
    per = _demo(registry, SEGMENTER_ID).eval_metrics["per_class"]
    assert per["Left lung"]["dice_mean"] >= 0.90
    assert per["Right lung"]["dice_mean"] >= 0.90
    assert per["Lesion"]["dice_mean"] >= 0.70
