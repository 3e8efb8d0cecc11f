"""The background ``covidct analyze`` run: command line, start, non-blocking poll, cancel.

The Slicer Logic starts the core CLI in a ``PythonSlicer`` subprocess and a
``QTimer`` calls ``AnalysisProcess.poll()``; nothing here needs Qt, so the same
class is tested with a plain Python interpreter. Two reader threads move stdout
and stderr lines into a queue, so ``poll()`` never blocks the GUI.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from CovidCTAnalysisSlicer.progress_events import ProgressEvent, formatLogLine, parseProgressLine

SEGMENT_POLICIES = ("auto", "always")
DEVICES = ("auto", "cpu", "cuda")
METHODS = ("model", "threshold")


@dataclass(frozen=True)
class AnalyzeOptions:
    """What the panel passes to ``covidct analyze`` besides the input and output paths."""

    segment: str = "auto"
    device: str = "auto"
    classifier: str = ""  # ID or ID@VERSION; empty: the CLI's default
    segmenter: str = ""
    modelsDir: str = ""
    reference: str = ""  # labelmap file in the core's label convention
    referenceLabels: str = ""
    force: bool = True  # the output folder is a fresh temp folder owned by the run
    method: str = "model"  # "threshold": HU thresholds, no classification (needs no trained model)

    def __post_init__(self) -> None:
        if self.segment not in SEGMENT_POLICIES:
            raise ValueError(f"segment policy {self.segment!r} is not one of {SEGMENT_POLICIES}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {DEVICES}")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")


def buildAnalyzeCommand(pythonExecutable: str, inputPath: str | Path, outputDir: str | Path,
                        options: AnalyzeOptions) -> list[str]:
    """The argument list that runs ``python -m CovidCTAnalysisLib.cli analyze ... --progress json``."""
    command = [str(pythonExecutable), "-m", "CovidCTAnalysisLib.cli", "analyze", str(inputPath),
               "--output-dir", str(outputDir), "--progress", "json",
               "--segment", options.segment, "--device", options.device]
    if options.method != "model":
        command += ["--method", options.method]
    if options.classifier:
        command += ["--classifier", options.classifier]
    if options.segmenter:
        command += ["--segmenter", options.segmenter]
    if options.modelsDir:
        command += ["--models-dir", str(options.modelsDir)]
    if options.reference:
        command += ["--reference", str(options.reference)]
        if options.referenceLabels:
            command += ["--reference-labels", options.referenceLabels]
    if options.force:
        command.append("--force")
    return command


def findPythonSlicer(executable: str | None = None) -> str:
    """The ``PythonSlicer`` launcher: on PATH (Slicer puts its bin folder there), else beside ``executable``.

    ``PythonSlicer`` sets up Slicer's library paths before starting Python, so the
    subprocess sees the same packages as Slicer (those installed on first Analyze included).
    """
    name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = Path(executable or sys.executable).parent / name
    if not candidate.is_file():
        raise FileNotFoundError(f"PythonSlicer was not found on PATH nor at {candidate}; expected a Slicer installation")
    return str(candidate)


def environmentWithModulePath(moduleDir: str | Path, baseEnvironment: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment whose PYTHONPATH starts with the module folder (holding CovidCTAnalysisLib)."""
    environment = dict(os.environ if baseEnvironment is None else baseEnvironment)
    existing = environment.get("PYTHONPATH", "")
    environment["PYTHONPATH"] = str(moduleDir) + (os.pathsep + existing if existing else "")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def processGroupKwargs() -> dict:
    """``Popen`` arguments that start a process in a group of its own, so that ``killProcessTree`` can end it."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    # A new session, so Cancel can end PythonSlicer's launcher and the Python it starts together.
    return {"start_new_session": True}


def killProcessTree(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Kill ``process`` (started with ``processGroupKwargs``) and everything it started; waits for it."""
    if process.poll() is None:
        try:
            if sys.platform == "win32":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
            else:
                os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class AnalysisProcess:
    """One running analysis. ``poll()`` returns the progress events that arrived since the last call.

    States: ``running`` until the process exits, then ``succeeded``, ``failed``
    or ``cancelled``. ``errorMessage`` holds the CLI's own error text when it failed.
    """

    def __init__(self, command: Sequence[str], environment: dict[str, str] | None = None,
                 cwd: str | Path | None = None, expectReport: bool = True) -> None:
        self.command = list(command)
        self.expectReport = expectReport  # False for jobs without a "done" event (demo training): exit 0 is success
        self.logLines: list[str] = []
        self.errorMessage = ""
        self.reportPath: str | None = None
        self.fraction = 0.0
        self.state = "running"
        self.returnCode: int | None = None
        self._queue: queue.Queue[ProgressEvent | None] = queue.Queue()
        self._openStreams = 2
        self._stderrTail: list[str] = []
        self._heldErrorLines: list[ProgressEvent] = []
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=environment, cwd=None if cwd is None else str(cwd), text=True, encoding="utf-8",
            errors="replace", bufsize=1, **processGroupKwargs(),
        )
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            threading.Thread(target=self._readLines, args=(stream, name), daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _readLines(self, stream, name: str) -> None:
        try:
            for line in stream:
                event = parseProgressLine(line, stream=name)
                if event is not None:
                    self._queue.put(event)
        finally:
            stream.close()
            self._queue.put(None)  # end-of-stream marker

    def poll(self) -> list[ProgressEvent]:
        """New events since the last call (never blocks). Updates state when the process has ended."""
        events: list[ProgressEvent] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._openStreams -= 1
            elif item.kind == "output" and item.stream == "stderr" and item.message.startswith("error: "):
                # The CLI repeats its protocol error on stderr, in a race with stdout: held until the end,
                # then shown only if it says something the error event did not.
                self._heldErrorLines.append(item)
            else:
                self._record(item)
                events.append(item)
        if self.state == "running" and self._openStreams == 0 and self._process.poll() is not None:
            for held in self._heldErrorLines:
                if held.message != f"error: {self.errorMessage}":
                    self._record(held)
                    events.append(held)
            self._heldErrorLines = []
            self._finish(self._process.returncode)
        return events

    def _record(self, event: ProgressEvent) -> None:
        self.logLines.append(formatLogLine(event))
        if event.fraction is not None and event.kind == "step":
            self.fraction = event.fraction
        if event.kind == "error":
            self.errorMessage = event.message
        elif event.kind == "done":
            self.reportPath = event.report
            self.fraction = 1.0
        elif event.kind == "output" and event.stream == "stderr":
            self._stderrTail = (self._stderrTail + [event.message])[-20:]

    def _finish(self, returnCode: int) -> None:
        self.returnCode = returnCode
        if self.state == "cancelled":
            return
        if returnCode == 0 and (self.reportPath or not self.expectReport):
            self.state = "succeeded"
            return
        self.state = "failed"
        if not self.errorMessage:
            tail = "\n".join(self._stderrTail[-8:])
            self.errorMessage = (f"the analysis process exited with status {returnCode}"
                                 + (f":\n{tail}" if tail else " without an error message"))

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def wait(self, timeout: float | None = None) -> list[ProgressEvent]:
        """Block until the process ends (for scripts and tests without an event loop); returns all events."""
        self._process.wait(timeout=timeout)
        events: list[ProgressEvent] = []
        while not self.finished:
            events += self.poll()
            if not self.finished:
                threading.Event().wait(0.02)
        return events

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the process and everything it started; safe to call twice or after it ended."""
        if self.finished:
            return
        self.state = "cancelled"
        self.errorMessage = "cancelled by the user"
        killProcessTree(self._process, timeout)
        self.returnCode = self._process.returncode
        self.poll()
