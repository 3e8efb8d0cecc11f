""""Train the demo models here" (CovidCTAnalysisSlicer.training_run): the command, the progress, Cancel.

The Logic's path (temp work folder, models folder) is in test_slicer_panel_logic.py; the demo training itself
is tested by the training tests. Here: the background process runs training.demo from the module folder's
PYTHONPATH, reports its step lines as progress, and Cancel ends it without installing anything.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
sys.path.insert(0, str(MODULE))

from CovidCTAnalysisSlicer import training_run  # noqa: E402


def test_command_and_step_fraction():
    command = training_run.buildTrainDemoCommand("PythonSlicer", "/m", "/w", quick=True)
    assert command == ["PythonSlicer", "-m", "training.demo", "--models-dir", "/m", "--work-dir", "/w", "--quick"]
    assert training_run.stepFraction("==> [demo 1/11] training the demo classifier  (elapsed 0 s)") == 0.0
    assert training_run.stepFraction("==> [demo 6/12] exporting") == 5 / 12
    assert training_run.stepFraction("    done: train_classifier in 40 s") is None
    estimate = training_run.trainingEstimate(8)
    assert "8 CPU cores" in estimate and "about 21 minutes" in estimate and "not for diagnosis" in estimate
    assert "55-63 minutes on a 2-core CPU without AVX-512" in estimate  # the slow case is said too


def test_training_runs_from_the_module_path_and_cancel_installs_nothing(tmp_path):
    """training/ is found through the module folder's PYTHONPATH (as installed), and Cancel ends the process."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}  # training/ as shipped
    run = training_run.TrainingRun(sys.executable, MODULE, tmp_path / "models", tmp_path / "work",
                                   environment=environment, quick=True)
    lines, start = [], time.monotonic()
    while not any("[demo 1/" in line for line in lines):
        lines += [event.message for event in run.poll()]
        assert not run.finished, "\n".join(run.process.logLines[-20:])
        assert time.monotonic() - start < 120, lines
        time.sleep(0.1)
    assert run.fraction == 0.0
    run.cancel()
    assert run.state == "cancelled" and run.process._process.poll() is not None
    assert not list((tmp_path / "models").rglob("model.safetensors"))
