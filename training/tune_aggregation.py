"""Choose a classifier model's slice-aggregation rule on its own validation patients.

    python -m training.tune_aggregation --model-dir out/model --dataset phantoms --phantom-seeds 0-11

How slice probabilities become one patient's answer (``classify.aggregate``: ``mean``, or
``top_fraction_mean`` with a fraction) matters as much as the slices: a COVID-19 patient whose
ground-glass opacities touch a tenth of the lung slices looks Normal by the mean. This script
classifies the model's recorded *validation* patients (``training_data.split.val``, never the
test patients) exactly as inference does (``classify.classify``), scores every candidate rule by
patient accuracy (ties: higher mean probability of the true class), writes the winner into the
folder's ``metadata.json`` (``preprocessing.aggregation``) and records every candidate's score
under ``training_data.aggregation_tuning``. Run it before ``training.evaluate``.
Research use, not for diagnosis.
"""

from __future__ import annotations

import json
import time

import numpy as np
from CovidCTAnalysisLib.models.folder import check_model_folder, load_model_folder
from CovidCTAnalysisLib.models.metadata import METADATA_FILE

from training.common import resolve_device, write_json
from training.progress import progress_line

FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def candidates() -> list[dict]:
    return [{"rule": "mean"}] + [{"rule": "top_fraction_mean", "fraction": f} for f in FRACTIONS]


def score(slice_probs: list[np.ndarray], truth: list[int], class_names: list[str]) -> list[dict]:
    """Patient accuracy and mean true-class probability of every candidate rule."""
    from CovidCTAnalysisLib.inference.classify import aggregate

    rows = []
    for agg in candidates():
        p = np.array([aggregate(sp, class_names, agg) for sp in slice_probs])
        y = np.asarray(truth)
        rows.append({"aggregation": agg, "accuracy": float((p.argmax(axis=1) == y).mean()),
                     "true_class_probability": float(p[np.arange(len(y)), y].mean()), "n": len(y)})
    return rows


def best(rows: list[dict]) -> dict:
    """Highest accuracy, then highest true-class probability; the first listed (simplest) wins exact ties."""
    return max(rows, key=lambda r: (r["accuracy"], round(r["true_class_probability"], 6)))


def main(argv: list[str] | None = None) -> int:
    from training.evaluate import build_parser, load_eval_cases, open_model_dir

    p = build_parser()
    p.prog, p.description = "python -m training.tune_aggregation", __doc__.split("\n")[0]
    args = p.parse_args(argv)
    args.held_out = True  # only the validation patients: the test patients never choose anything
    t0 = time.monotonic()
    model_dir, raw = open_model_dir(args)
    if raw["task"] != "classification":
        raise SystemExit(f"{model_dir} is a {raw['task']} model; aggregation tuning is for classifiers")
    from CovidCTAnalysisLib.inference.classify import classify
    from CovidCTAnalysisLib.loading.load import load_ct
    from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

    device = resolve_device(args.device)
    model = load_model_folder(model_dir, device)
    names = [str(c) for c in model.metadata.labels]
    cases, _ = load_eval_cases(args, raw, t0)
    probs, truth = [], []
    for i, case in enumerate(cases):
        if not case.is_volume:
            raise SystemExit("aggregation tuning needs volume cases (slices of one patient)")
        image = load_ct(case.image).image
        probs.append(classify(image, lung_extent(segment_lungs(image)), model, device).slice_probabilities)
        truth.append(case.class_index)
        progress_line("tune_aggregation", f"{i + 1}/{len(cases)} {case.patient_id}", t0)
    rows = score(probs, truth, names)
    win = best(rows)
    for r in rows:
        progress_line("tune_aggregation", f"{json.dumps(r['aggregation'])}: validation patient accuracy "
                      f"{r['accuracy']:.3f}, true-class probability {r['true_class_probability']:.3f}"
                      f"{'  <- chosen' if r is win else ''}", t0)
    raw["preprocessing"]["aggregation"] = win["aggregation"]
    raw.setdefault("training_data", {})["aggregation_tuning"] = {
        "chosen": win["aggregation"], "on": "the model's validation patients (training_data.split.val)",
        "candidates": rows, "measured_by": "training/tune_aggregation.py"}
    write_json(model_dir / METADATA_FILE, raw)
    check_model_folder(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
