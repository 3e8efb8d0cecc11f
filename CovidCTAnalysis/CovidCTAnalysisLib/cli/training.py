"""``covidct train classifier|segmenter``, ``evaluate``, ``export``, ``tune-aggregation``: the training tools.

They are the ``training`` package's own command lines (``python -m training.train_classifier`` and
friends), reached from the installed ``covidct`` in any folder: this module only forwards the
arguments, so ``covidct train classifier --help`` shows the training script's options. The
``training`` package ships in the pip package (not in the Slicer module); it is imported only
when a tool runs, so ``covidct analyze`` never loads it.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from CovidCTAnalysisLib.errors import CovidCTError

TRAINERS = {"classifier": "train_classifier", "segmenter": "train_segmenter", "interactive": "train_interactive"}


class TrainingToolsMissing(CovidCTError):
    """The ``training`` package (or a package only training needs, e.g. tensorboard) is not installed."""

    exit_code = 2


def run_training_module(module: str, argv: list[str]) -> int:
    """``training.<module>.main(argv)``; a missing ``training`` package or extra becomes one clear error."""
    try:
        tool = importlib.import_module(f"training.{module}")
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing == "training":
            raise TrainingToolsMissing(
                f"the training tools (package 'training') are not installed with this covidct; expected them in "
                f"the pip package. Install it with `pip install 'covidct-analysis[train]'` or, from a checkout, "
                f"`pip install -e '.[train]'`, or run `python -m training.{module}` from the checkout's root.") from e
        raise TrainingToolsMissing(
            f"training.{module} needs the package {missing!r}, which is not installed; install the training extra: "
            f"`pip install 'covidct-analysis[train]'` (from a checkout: `pip install -e '.[train]'`).") from e
    return int(tool.main(argv) or 0)


@dataclass(frozen=True)
class ForwardingCommand:
    """A subcommand whose arguments all go, unparsed, to ``training.<module>.main``."""

    name: str
    module: str
    help: str

    def add_parser(self, subparsers) -> argparse.ArgumentParser:
        # add_help=False: --help belongs to the training tool; main() hands every argument over (forward_args)
        p = subparsers.add_parser(self.name, help=self.help, add_help=False,
                                  description=f"{self.help}. Same options as `python -m training.{self.module}`; "
                                              f"`covidct {self.name} --help` lists them.")
        p.set_defaults(forward_args=True)
        return p

    def run(self, args: argparse.Namespace) -> int:
        return run_training_module(self.module, list(args.forwarded))


class TrainCommand:
    """``covidct train classifier|segmenter ARGS``."""

    @staticmethod
    def add_parser(subparsers) -> argparse.ArgumentParser:
        p = subparsers.add_parser(
            "train", help="train the classifier (ResNet-50) or the segmenter (3D U-Net) on your data",
            description="Train a network; `covidct train classifier --help` (or segmenter) lists the options "
                        "(the same as `python -m training.train_classifier` / `training.train_segmenter`). "
                        "Then `covidct export`, `covidct tune-aggregation` (classifier), `covidct evaluate`, "
                        "`covidct models install`. Research use, not for diagnosis.")
        p.add_argument("network", choices=sorted(TRAINERS), help="what to train")
        p.add_argument("forwarded", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="the training script's options (see `covidct train NETWORK --help`)")
        return p

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return run_training_module(TRAINERS[args.network], list(args.forwarded))


train = TrainCommand()
evaluate = ForwardingCommand("evaluate", "evaluate", "measure a model folder on held-out data, into its metadata.json")
export = ForwardingCommand("export", "export", "package a training run as a model folder (metadata.json + weights)")
tune_aggregation = ForwardingCommand("tune-aggregation", "tune_aggregation",
                                     "choose a classifier's slice aggregation on its validation patients")

# In the order `covidct --help` lists them (after the analysis commands).
COMMANDS = (train, evaluate, export, tune_aggregation)
