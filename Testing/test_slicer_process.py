"""The background run without Qt: progress-line parsing, the command line, poll/cancel with real subprocesses."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CovidCTAnalysis"))

from CovidCTAnalysisSlicer.models import DEVICE_CHOICES, SEGMENT_CHOICES  # noqa: E402
from CovidCTAnalysisSlicer.process import (  # noqa: E402
    AnalysisProcess,
    AnalyzeOptions,
    buildAnalyzeCommand,
    environmentWithModulePath,
)
from CovidCTAnalysisSlicer.progress_events import formatLogLine, parseProgressLine  # noqa: E402


def test_parse_protocol_lines():
    step = parseProgressLine('{"event": "step", "step": "classify", "fraction": 0.35, "message": "Classifying"}\n')
    assert (step.kind, step.step, step.fraction, step.message) == ("step", "classify", 0.35, "Classifying")
    assert formatLogLine(step) == "[ 35%] Classifying"
    error = parseProgressLine('{"event": "error", "message": "input is not CT", "exit_code": 2}')
    assert (error.kind, error.message, error.exitCode) == ("error", "input is not CT", 2)
    done = parseProgressLine('{"event": "done", "report": "/o/report.json", "fraction": 1.0, "extra": 1}')
    assert (done.kind, done.report, done.fraction) == ("done", "/o/report.json", 1.0)
    warning = parseProgressLine('{"event": "log", "level": "warning", "message": "demo model"}')
    assert formatLogLine(warning) == "warning: demo model"
    # Unknown events are ignored; plain text is kept as output; fractions are clamped.
    assert parseProgressLine('{"event": "future-thing", "x": 1}') is None
    assert parseProgressLine("   \n") is None
    text = parseProgressLine("Traceback (most recent call last):", stream="stderr")
    assert (text.kind, text.stream) == ("output", "stderr")
    assert parseProgressLine('{"event": "step", "fraction": 7}').fraction == 1.0
    assert parseProgressLine("[1, 2]").kind == "output"


def test_command_line_matches_the_cli_parser():
    options = AnalyzeOptions(segment=SEGMENT_CHOICES["always"], device=DEVICE_CHOICES["CPU"],
                             classifier="cls@1.0.0", segmenter="seg", modelsDir="/models", reference="/r.nii.gz",
                             referenceLabels="1=1,2=2,3=3")
    command = buildAnalyzeCommand("/slicer/bin/PythonSlicer", "/tmp/in.nrrd", "/tmp/out", options)
    assert command[:3] == ["/slicer/bin/PythonSlicer", "-m", "CovidCTAnalysisLib.cli"]
    from CovidCTAnalysisLib.cli.main import build_parser

    args = build_parser().parse_args(command[3:])
    assert (args.command, args.input, args.output_dir, args.progress) == ("analyze", "/tmp/in.nrrd", "/tmp/out", "json")
    assert (args.segment, args.device, args.classifier, args.segmenter) == ("always", "cpu", "cls@1.0.0", "seg")
    assert (args.models_dir, args.reference, args.reference_labels, args.force) == (
        "/models", "/r.nii.gz", "1=1,2=2,3=3", True)
    defaults = build_parser().parse_args(buildAnalyzeCommand("py", "in", "out", AnalyzeOptions(force=False))[3:])
    assert (defaults.classifier, defaults.reference, defaults.force, defaults.segment) == (None, None, False, "auto")
    with pytest.raises(ValueError, match="device 'gpu'"):
        AnalyzeOptions(device="gpu")


def test_module_folder_is_first_on_pythonpath():
    env = environmentWithModulePath("/mod", {"PYTHONPATH": "/other", "X": "1"})
    assert env["PYTHONPATH"] == "/mod" + os.pathsep + "/other" and env["X"] == "1"


def fakeCli(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_cli.py"
    script.write_text("import json, sys, time, subprocess\n"
                      "def emit(**kw):\n    print(json.dumps(kw), flush=True)\n" + textwrap.dedent(body))
    return [sys.executable, str(script)]


def pollUntilFinished(process: AnalysisProcess, timeout: float = 30.0) -> list:
    events, start = [], time.monotonic()
    while not process.finished:
        events += process.poll()
        assert time.monotonic() - start < timeout, "process did not finish"
        time.sleep(0.02)
    return events


def test_poll_streams_events_without_blocking(tmp_path):
    command = fakeCli(tmp_path, """
        emit(event="step", step="load", fraction=0.1, message="Loading")
        time.sleep(1.0)
        print("a library prints this", file=sys.stderr, flush=True)
        emit(event="step", step="classify", fraction=0.6, message="Classifying")
        emit(event="done", report="/out/report.json", fraction=1.0)
    """)
    process = AnalysisProcess(command)
    t0 = time.monotonic()
    first = process.poll()
    assert time.monotonic() - t0 < 0.2  # poll() returns at once even while the child sleeps
    events = first + pollUntilFinished(process)
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 2 and kinds[-1] in ("done", "output")
    assert process.state == "succeeded" and process.returnCode == 0
    assert process.reportPath == "/out/report.json" and process.fraction == 1.0
    assert "a library prints this" in process.logLines and "[ 60%] Classifying" in process.logLines


def test_cli_error_message_reaches_the_user(tmp_path):
    command = fakeCli(tmp_path, """
        emit(event="step", step="load", fraction=0.05, message="Loading")
        emit(event="error", message="input.nrrd is not a CT: Modality MR; expected CT", exit_code=2)
        print("error: input.nrrd is not a CT: Modality MR; expected CT", file=sys.stderr)  # as cli.main does
        sys.exit(2)
    """)
    process = AnalysisProcess(command)
    pollUntilFinished(process)
    assert process.state == "failed" and process.returnCode == 2
    assert process.errorMessage == "input.nrrd is not a CT: Modality MR; expected CT"
    # The CLI's stderr copy of the error is not shown a second time.
    assert sum("is not a CT" in line for line in process.logLines) == 1


def test_crash_without_protocol_error_shows_stderr_tail(tmp_path):
    command = fakeCli(tmp_path, """
        raise RuntimeError("CUDA out of memory")
    """)
    process = AnalysisProcess(command)
    pollUntilFinished(process)
    assert process.state == "failed" and process.returnCode == 1
    assert "status 1" in process.errorMessage and "CUDA out of memory" in process.errorMessage


def test_exit_zero_without_done_is_a_failure(tmp_path):
    process = AnalysisProcess(fakeCli(tmp_path, "emit(event='step', fraction=0.5)\n"))
    pollUntilFinished(process)
    assert process.state == "failed"


def test_cancel_kills_the_process_and_its_children(tmp_path):
    pidFile = tmp_path / "child.pid"
    command = fakeCli(tmp_path, f"""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidFile)!r}, "w").write(str(child.pid))
        emit(event="step", step="segment", fraction=0.5, message="Segmenting")
        time.sleep(60)
    """)
    process = AnalysisProcess(command)
    start = time.monotonic()
    while not pidFile.exists() or not pidFile.read_text():
        assert time.monotonic() - start < 20
        time.sleep(0.05)
    childPid = int(pidFile.read_text())
    process.cancel()
    assert process.state == "cancelled" and process.finished
    assert process.returnCode is not None and process.returnCode != 0
    deadline = time.monotonic() + 5
    while _alive(childPid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(childPid), "the grandchild (PythonSlicer's real Python) survived Cancel"
    process.cancel()  # a second Cancel is harmless
    assert process.state == "cancelled"


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by init) counts as dead.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_real_cli_refusal_arrives_as_protocol_error(tmp_path):
    """The real core CLI, started the way the Logic starts it, refuses a missing input with its own message."""
    command = buildAnalyzeCommand(sys.executable, tmp_path / "missing.nrrd", tmp_path / "out",
                                  AnalyzeOptions(method="threshold"))
    process = AnalysisProcess(command, environment=environmentWithModulePath(REPO / "CovidCTAnalysis"))
    pollUntilFinished(process, timeout=120)
    assert process.state == "failed" and process.returnCode not in (0, None)
    assert "missing.nrrd" in process.errorMessage
    assert any(line.startswith("error: ") for line in process.logLines)  # it came as a protocol error event


def test_missing_requirements_are_found(tmp_path):
    from CovidCTAnalysisSlicer.requirements import missingRequirements

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0\nnumpy<1.0  # too old a range for the installed numpy\n"
                            "surely-not-installed-covidct-pkg>=1\n\n")
    assert missingRequirements(requirements) == ["numpy<1.0", "surely-not-installed-covidct-pkg>=1"]
    # The module's own file is satisfied in the development environment.
    assert missingRequirements(REPO / "CovidCTAnalysis" / "Resources" / "requirements.txt") == []


def _writeModel(root: Path, model_id: str, version: str, task: str, demo: bool) -> None:
    import json as _json

    folder = root / model_id / version
    folder.mkdir(parents=True)
    labels = ["Normal", "Pneumonia", "COVID-19"] if task == "classification" else {
        "0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"}
    (folder / "metadata.json").write_text(_json.dumps({
        "id": model_id, "version": version, "task": task, "architecture": {"name": "resnet50", "kwargs": {}},
        "sha256": "0123456789abcdef" * 4, "trained_on": "synthetic phantoms" if demo else "a dataset",
        "intended_use": "Research use, not for diagnosis.", "preprocessing": {}, "labels": labels,
        "eval_metrics": {}, "demo": demo}))


def test_model_choices_label_demo_models_and_list_the_default_first(tmp_path):
    from CovidCTAnalysisSlicer.models import listModelChoices

    _writeModel(tmp_path, "covidct-classifier-demo", "0.2.0", "classification", demo=True)
    _writeModel(tmp_path, "covidct-classifier", "1.0.0", "classification", demo=False)
    _writeModel(tmp_path, "covidct-segmenter-demo", "0.1.0", "segmentation", demo=True)
    choices, message = listModelChoices("classification", str(tmp_path))
    assert message == ""
    assert [c.spec for c in choices] == ["covidct-classifier@1.0.0", "covidct-classifier-demo@0.2.0"]
    assert choices[0].default and not choices[0].demo  # the core prefers a non-demo model; the panel shows it first
    assert "DEMO" in choices[1].label and "DEMO" not in choices[0].label
    segmenters, _ = listModelChoices("segmentation", str(tmp_path))
    assert [c.spec for c in segmenters] == ["covidct-segmenter-demo@0.1.0"] and "DEMO" in segmenters[0].label
    empty, message = listModelChoices("classification", str(tmp_path / "none"))
    assert empty == [] and "No classification model is installed" in message


def test_python_slicer_is_found_on_path_or_beside_the_interpreter(tmp_path, monkeypatch):
    from CovidCTAnalysisSlicer.process import findPythonSlicer

    bin_dir = tmp_path / "Slicer" / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / ("PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer")
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert findPythonSlicer(str(bin_dir / "python-real")) == str(launcher)
    with pytest.raises(FileNotFoundError, match="PythonSlicer was not found"):
        findPythonSlicer(str(tmp_path / "elsewhere" / "python"))
    monkeypatch.setenv("PATH", str(bin_dir))
    assert findPythonSlicer(str(tmp_path / "elsewhere" / "python")) == str(launcher)
