"""Package a training run as a model folder the core loads (``covidct models install`` accepts it).

    python -m training.export --run-dir out/cls --out out/model-cls --id covidct-classifier --version 1.0.0

Reads ``run.json`` and the best checkpoint (``checkpoint_best.pt``, ``weights_only=True``),
rebuilds the network with the core's builders and writes ``model.safetensors`` plus
``metadata.json`` through ``model_folder.save_model_folder`` (which fills in the sha256 and
checks that the folder loads). The metadata records the training data, split, settings,
validation history, git commit, library versions and intended use ("Research use, not for
diagnosis."). ``eval_metrics`` stays a placeholder until ``python -m training.evaluate``
measures the model; a folder can be evaluated again at any time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from CovidCTAnalysisLib.models.folder import save_model_folder
from CovidCTAnalysisLib.models.metadata import ModelMetadata
from CovidCTAnalysisLib.models.networks import build_classifier, build_interactive, build_segmenter

from training.common import CHECKPOINT_BEST, INTENDED_USE, git_commit, versions
from training.train_classifier import read_run

NOT_EVALUATED = {"status": "not evaluated yet: run python -m training.evaluate --model-dir <this folder>"}


def trained_on_line(run: dict, demo: bool) -> str:
    """One line for every result made with the model."""
    ds = run["dataset"]
    if demo:
        return (f"DEMO: synthetic chest phantoms (CovidCTAnalysisLib.phantom.generator), seeds {ds.get('seeds')} "
                f"({', '.join(ds.get('kinds', []))}); not real patients")
    n = sum(ds.get("patients", {}).values()) if isinstance(ds.get("patients"), dict) else ds.get("cases")
    return f"{ds.get('name')}: {n} patients/cases, split {run['split']['train_fraction']:.0%} train by patient"


def build_metadata(run: dict, model_id: str, version: str, demo: bool, description: str | None = None) -> dict:
    """The ``metadata.json`` fields (all but sha256, which ``save_model_folder`` fills in)."""
    task = run["task"]
    what = {"classification": "Normal / Pneumonia / COVID-19 classifier (ResNet-50, 2-D slices)",
            "interactive": "interactive lesion correction by clicks (DeepGrow-style MONAI 3D U-Net)"}.get(
        task, "left lung / right lung / lesion segmenter (MONAI 3D U-Net)")
    extra = {"click_simulation": run["click_simulation"]} if task == "interactive" else {}
    return {
        **extra,
        "id": model_id,
        "version": version,
        "task": task,
        "name": ("DEMO " if demo else "") + what,
        "description": description or (("DEMO model, trained on synthetic phantoms: it shows the pipeline working "
                                         "and must not be used on patients. ") if demo else "") + what + ".",
        "architecture": run["architecture"],
        "labels": run["labels"],
        "preprocessing": run["preprocessing"],
        "demo": bool(demo),
        "trained_on": trained_on_line(run, demo),
        "training_data": {"dataset": run["dataset"], "split": run["split"], "val_cases": run.get("val_cases")},
        "training": {**run["training"], "best_val_metric": run["best_val_metric"], "history": run["history"],
                     "command": run.get("command"), "seconds": run.get("seconds")},
        "data_source": run["dataset"].get("name"),
        "eval_metrics": dict(NOT_EVALUATED),
        "intended_use": INTENDED_USE,
        "git_commit": git_commit(),
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "authors": "CovidCTAnalysis training scripts",
    }


def load_trained_module(run_dir: Path, run: dict, checkpoint: str = CHECKPOINT_BEST) -> torch.nn.Module:
    """The network of ``run.json`` with the checkpoint's weights (loaded with ``weights_only=True``)."""
    path = Path(run_dir) / checkpoint
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; train first (it is written by train_classifier/train_segmenter)")
    kwargs = dict(run["architecture"]["kwargs"])
    builder = {"classification": build_classifier, "interactive": build_interactive}.get(run["task"], build_segmenter)
    module = builder(**kwargs)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["model"])
    return module.eval()


def export(run_dir: str | Path, out: str | Path, model_id: str, version: str, demo: bool = False,
           force: bool = False, checkpoint: str = CHECKPOINT_BEST) -> ModelMetadata:
    """Write the model folder ``out`` from a training output folder; returns its metadata."""
    run = read_run(run_dir)
    module = load_trained_module(Path(run_dir), run, checkpoint)
    return save_model_folder(module, build_metadata(run, model_id, version, demo), Path(out), force=force)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="--output-dir of train_classifier / train_segmenter")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--id", required=True, help="model id, e.g. covidct-classifier")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--demo", action="store_true", help="trained on phantoms: label it DEMO everywhere")
    p.add_argument("--checkpoint", default=CHECKPOINT_BEST)
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    args = p.parse_args(argv)
    meta = export(args.run_dir, args.out, args.id, args.version, args.demo, args.force, args.checkpoint)
    print(f"wrote {args.out}: {meta.label_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
