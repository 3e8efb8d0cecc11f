"""training.tune_aggregation: the rule is chosen by validation patient accuracy (fast, no model)."""

import numpy as np

from training.tune_aggregation import best, candidates, score

NAMES = ["Normal", "Pneumonia", "COVID-19"]


def _patient(n: int, sick_slices: int, sick_class: int) -> np.ndarray:
    p = np.tile([0.8, 0.1, 0.1], (n, 1))
    p[:sick_slices] = 0.05
    p[:sick_slices, sick_class] = 0.9
    return p


def test_top_fraction_wins_when_disease_touches_few_slices():
    probs = [_patient(20, 0, 2), _patient(20, 3, 2), _patient(20, 12, 1)]
    rows = score(probs, [0, 2, 1], NAMES)
    assert [r["aggregation"] for r in rows] == candidates()
    by_rule = {json_key(r["aggregation"]): r["accuracy"] for r in rows}
    assert by_rule["mean"] < 1.0  # the COVID patient's 3 of 20 slices are outvoted by the mean
    win = best(rows)
    assert win["accuracy"] == 1.0 and win["aggregation"]["rule"] == "top_fraction_mean"
    assert win["aggregation"]["fraction"] <= 0.15


def test_mean_kept_on_ties():
    probs = [_patient(10, 0, 2), _patient(10, 10, 2)]
    rows = score(probs, [0, 2], NAMES)
    assert all(r["accuracy"] == 1.0 for r in rows)
    assert best(rows)["aggregation"] == {"rule": "mean"}  # the simplest rule wins exact ties


def json_key(agg: dict) -> str:
    return agg["rule"] if agg["rule"] == "mean" else f"{agg['rule']} {agg['fraction']}"
