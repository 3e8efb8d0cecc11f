"""Tiny demo models for the tests that need trained models, made in a few minutes on 2 cores.

``make demo``'s own path (``training.demo.train_and_install``: train, export, tune the classifier's
aggregation, evaluate on unseen seeds, install) runs with tiny settings: phantoms at 9 mm, three patients
per class, one classifier epoch at a 32-pixel ResNet-50 input, eight short epochs of a small U-Net. The
models are poor (the segmenter finds lungs, not lesions), but they are
real model folders with real provenance and real ``eval_metrics``, installed in a registry of their own.
``Testing/conftest.py`` makes them once per session (``tiny_demo_models``) and points
``$COVIDCT_MODELS_DIR`` at them for the tests that ask (``tiny_models_dir``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

TINY_VERSION = "0.0.1-test"
TRAIN_SEEDS = "0-2"
EVAL_SEEDS = "100"
PHANTOM_ARGS = ("--phantom-spacing", "9")
# Appended after the demo's own arguments (argparse keeps the last value).
TINY_ARGS = {
    "classifier": ["--input-size", "32", "--max-slices-per-case", "2", "--epochs", "1", "--val-every", "1",
                   "--batch-size", "6", "--threads", "2", "--device", "cpu"],
    # The segmenter must find lungs (the Slicer self-test asks for lung Dice > 0.5): 8 short epochs of a 3-level
    # U-Net on 24-voxel (216 mm) patches gave lung Dice 0.73 on unseen seed 100 (1 epoch of a 2-level one: 0.33).
    "segmenter": ["--spacing", "9,9,9", "--roi", "24,24,24", "--epochs", "8", "--val-every", "8", "--batch-size", "2",
                  "--num-samples", "8", "--lr", "3e-3", "--lesion-crop-ratio", "1", "--channels", "8,16,32",
                  "--strides", "2,2", "--num-res-units", "1", "--margin-mm", "9", "--threads", "2", "--device", "cpu"],
}


@dataclass(frozen=True)
class TinyDemoModels:
    root: Path  # the registry
    cache: Path  # the phantom cache the models were trained and evaluated on
    version: str = TINY_VERSION
    train_seeds: str = TRAIN_SEEDS
    eval_seeds: str = EVAL_SEEDS
    phantom_spacing: float = float(PHANTOM_ARGS[1])


def build_tiny_demo_models(work: Path) -> TinyDemoModels:
    """Train, evaluate and install the tiny demo classifier and segmenter under ``work``."""
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    from training.demo import Steps, train_and_install

    registry = ModelRegistry(work / "models")
    cache = work / "phantom-cache"
    steps = Steps(total=9)
    with contextlib.redirect_stdout(io.StringIO()):  # the demo's progress lines; pytest -s would show them all
        for kind in ("classifier", "segmenter"):
            train_and_install(kind, steps, work, registry, TRAIN_SEEDS, EVAL_SEEDS, TINY_ARGS[kind], cache,
                              TINY_VERSION, phantom_args=PHANTOM_ARGS)
        steps.finish()
    return TinyDemoModels(root=registry.root, cache=cache)


# A tiny interactive model, trained by the project's own trainer (training.train_interactive) and exported and
# installed like the demo one: 4 steps of a 2-level U-Net on 16-voxel patches at 6 mm. Its drawing is poor; the
# tests that use it check the machinery (worker, panel), not the quality.
INTERACTIVE_ID = "covidct-interactive-tiny-test"
INTERACTIVE_ARGS = ["--dataset", "phantoms", "--phantom-kinds", "covid", "--phantom-seeds", TRAIN_SEEDS,
                    "--phantom-spacing", "6", "--roi", "16", "--spacing", "6", "--channels", "4,8", "--strides", "2",
                    "--num-res-units", "1", "--batch-size", "2", "--val-patches", "2", "--max-inner", "1",
                    "--threads", "2", "--device", "cpu", "--iterations", "4", "--val-every", "4"]


def build_tiny_interactive_model(work: Path) -> Path:
    """Train, export and install a tiny interactive model under ``work``; returns the registry folder."""
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    from training.export import export
    from training.train_interactive import main as train_interactive

    with contextlib.redirect_stdout(io.StringIO()):
        if train_interactive([*INTERACTIVE_ARGS, "--cache-dir", str(work / "cache"), "--output-dir",
                              str(work / "run")]) != 0:
            raise RuntimeError("training the tiny interactive model failed")
        export(work / "run", work / "model", INTERACTIVE_ID, TINY_VERSION, demo=True)
    registry = ModelRegistry(work / "models")
    registry.install(work / "model")
    return registry.root
