""""Train the demo models here": ``python -m training.demo`` in a background PythonSlicer, with progress and Cancel.

The extension ships ``training/`` beside the module (``CovidCTAnalysis/CMakeLists.txt``, MODULE_TRAINING_SCRIPTS),
so the same ``PYTHONPATH`` that runs the analysis runs the demo training. It trains the DEMO classifier and
segmenter on synthetic phantoms, evaluates them on unseen phantoms, and installs them into the panel's models
folder with the registry's sha256 checks. Training also needs ``Resources/requirements-train.txt`` (TensorBoard).
Progress comes from the demo's own step lines (``==> [demo 3/11] ...``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from CovidCTAnalysisLib.constants import DEMO_TRAINING_MEASURED

from CovidCTAnalysisSlicer.process import AnalysisProcess, environmentWithModulePath

STEP_LINE = re.compile(r"==> \[demo (\d+)/(\d+)\]")
MEASURED = DEMO_TRAINING_MEASURED  # measured with `make demo` (README, "The two commands")


def buildTrainDemoCommand(pythonExecutable: str, modelsDir: str | Path, workDir: str | Path,
                          quick: bool = False) -> list[str]:
    """The argument list of the demo training (``--quick``: minutes, poor models, for smoke tests only)."""
    command = [str(pythonExecutable), "-m", "training.demo", "--models-dir", str(modelsDir), "--work-dir", str(workDir)]
    return command + (["--quick"] if quick else [])


def stepFraction(line: str) -> float | None:
    """The fraction done when the demo prints ``==> [demo n/N]`` (step n starting), else None."""
    match = STEP_LINE.search(line)
    if not match:
        return None
    step, total = int(match.group(1)), int(match.group(2))
    return (step - 1) / total if total else None


def trainingEstimate(cpuCount: int | None = None) -> str:
    """What the user is told before the training starts."""
    cores = cpuCount or os.cpu_count() or 1
    return (f"Training the demo models took {MEASURED} where it was measured; this computer has {cores} CPU "
            f"cores, so expect roughly that (longer with fewer cores, shorter with more; an NVIDIA GPU is not used "
            "for the demo). Slicer stays usable meanwhile and Cancel stops it. The models are DEMO models, trained "
            "on synthetic phantoms: research use, not for diagnosis, and not for real scans.")


class TrainingRun:
    """One background demo training; ``poll()`` never blocks, ``fraction`` follows the demo's step lines."""

    def __init__(self, pythonExecutable: str, moduleDir: str | Path, modelsDir: str | Path, workDir: str | Path,
                 environment: dict[str, str] | None = None, quick: bool = False) -> None:
        Path(workDir).mkdir(parents=True, exist_ok=True)
        self.command = buildTrainDemoCommand(pythonExecutable, modelsDir, workDir, quick)
        self.fraction = 0.0
        self.process = AnalysisProcess(self.command, environment=environmentWithModulePath(moduleDir, environment),
                                       cwd=workDir, expectReport=False)

    def poll(self) -> list:
        events = self.process.poll()
        for event in events:
            fraction = stepFraction(event.message)
            if fraction is not None:
                self.fraction = fraction
        if self.process.state == "succeeded":
            self.fraction = 1.0
        return events

    @property
    def finished(self) -> bool:
        return self.process.finished

    @property
    def state(self) -> str:
        return self.process.state

    def cancel(self) -> None:
        self.process.cancel()
