"""The demo models that ``make demo`` installed: labelled DEMO, measured on unseen phantom seeds, good enough.

Skips when the demo models are not installed in the registry (``$COVIDCT_MODELS_DIR``); run
``make demo`` first. The thresholds are the issue's: classifier accuracy >= 0.90 over the three
classes; segmenter Dice >= 0.90 for each lung and >= 0.70 for lesions.
"""

from __future__ import annotations

import pytest

from training.demo import CLASSIFIER_ID, EVAL_SEEDS, SEGMENTER_ID, installed
from training.phantom_cache import parse_seeds


@pytest.fixture(scope="module")
def registry():
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    return ModelRegistry()


def _demo(registry, model_id):
    meta = installed(registry, model_id)
    if meta is None:
        pytest.skip(f"{model_id} is not installed in {registry.root}; run `make demo` first")
    return meta


def _common(meta):
    assert meta.demo is True
    assert meta.trained_on.startswith("DEMO: synthetic chest phantoms")
    assert "not for diagnosis" in meta.raw["intended_use"].lower()
    assert meta.raw["git_commit"] and meta.raw["versions"]["torch"]
    m = meta.eval_metrics
    assert m["measured_by"] == "training/evaluate.py"
    eval_seeds = set(parse_seeds(m["dataset"]["seeds"]))
    assert eval_seeds == set(parse_seeds(EVAL_SEEDS))
    trained_on = set(parse_seeds(meta.raw["training_data"]["dataset"]["seeds"]))
    assert trained_on and not eval_seeds & trained_on  # never seen in training
    return m


def test_demo_classifier_is_labelled_and_measured(registry):
    meta = _demo(registry, CLASSIFIER_ID)
    m = _common(meta)
    assert m["level"] == "patient" and m["n"] == 3 * len(parse_seeds(EVAL_SEEDS))
    assert 0.0 <= m["accuracy"] <= 1.0 and len(m["confusion_matrix"]["counts"]) == 3


def test_demo_segmenter_is_labelled_and_measured(registry):
    meta = _demo(registry, SEGMENTER_ID)
    per = _common(meta)["per_class"]
    assert set(per) == {"Left lung", "Right lung", "Lesion"}


def test_demo_classifier_accuracy(registry):
    m = _demo(registry, CLASSIFIER_ID).eval_metrics
    assert m["accuracy"] >= 0.90, m["confusion_matrix"]


def test_demo_segmenter_dice(registry):
    per = _demo(registry, SEGMENTER_ID).eval_metrics["per_class"]
    assert per["Left lung"]["dice_mean"] >= 0.90
    assert per["Right lung"]["dice_mean"] >= 0.90
    assert per["Lesion"]["dice_mean"] >= 0.70
