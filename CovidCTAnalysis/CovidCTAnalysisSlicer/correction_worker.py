"""The persistent refine worker seen from Slicer: ``python -m CovidCTAnalysisLib.interactive.worker`` in a
``PythonSlicer`` subprocess, fed one JSON request a line, answers read without blocking.

``CorrectionWorker.start`` launches it as ``process.py`` launches an analysis (module folder first on
PYTHONPATH, a process group of its own); ``send`` writes a request; ``poll`` returns the answers that
arrived (a reader thread queues stdout lines, so a QTimer can poll without freezing the GUI); ``wait``
blocks for one answer (tests, scripts); ``shutdown`` asks it to exit and waits; ``cancel`` kills it.
Nothing here needs Qt or MRML.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from CovidCTAnalysisSlicer.process import environmentWithModulePath, killProcessTree, processGroupKwargs

WORKER_MODULE = "CovidCTAnalysisLib.interactive.worker"


def buildWorkerCommand(pythonExecutable: str, model: str = "", modelsDir: str = "", device: str = "auto") -> list[str]:
    command = [str(pythonExecutable), "-m", WORKER_MODULE, "--device", device]
    if model:
        command += ["--model", model]
    if modelsDir:
        command += ["--models-dir", str(modelsDir)]
    return command


class CorrectionWorker:
    """One running worker. ``state``: starting → ready → stopped (shut down), cancelled or failed."""

    def __init__(self, command: Sequence[str], environment: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.state = "starting"
        self.errorMessage = ""
        self.readyAnswer: dict[str, Any] | None = None
        self.startedAt = time.perf_counter()
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderrTail: list[str] = []
        self._nextId = 0
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **processGroupKwargs())
        threading.Thread(target=self._readAnswers, daemon=True).start()
        threading.Thread(target=self._readStderr, daemon=True).start()

    @classmethod
    def start(cls, pythonExecutable: str, moduleDir: str | Path, model: str = "", modelsDir: str = "",
              device: str = "auto", environment: dict[str, str] | None = None) -> CorrectionWorker:
        return cls(buildWorkerCommand(pythonExecutable, model, modelsDir, device),
                   environmentWithModulePath(moduleDir, environment))

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None and self.state in ("starting", "ready")

    def _readAnswers(self) -> None:
        try:
            for line in self._process.stdout:
                try:
                    answer = json.loads(line)
                except json.JSONDecodeError:
                    answer = None
                if isinstance(answer, dict):
                    self._answers.put(answer)
                elif line.strip():  # library prints on stdout: kept with stderr for the error message
                    self._stderrTail = (self._stderrTail + [line.rstrip()])[-20:]
        finally:
            self._answers.put(None)

    def _readStderr(self) -> None:
        for line in self._process.stderr:
            self._stderrTail = (self._stderrTail + [line.rstrip()])[-20:]

    def send(self, request: dict[str, Any]) -> int:
        """Write one request (its ``id`` is set here and returned); raises RuntimeError when the worker is gone."""
        if not self.alive:
            raise RuntimeError(f"the correction worker is not running ({self.state}); {self.errorMessage}".rstrip("; "))
        self._nextId += 1
        try:
            self._process.stdin.write(json.dumps({**request, "id": self._nextId}) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self._fail(f"the correction worker stopped reading requests ({e})")
            raise RuntimeError(self.errorMessage) from e
        return self._nextId

    def poll(self) -> list[dict[str, Any]]:
        """The answers that arrived since the last call (never blocks); the ``ready`` answer updates ``state``."""
        answers = []
        while True:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                break
            if answer is None:
                if self.state in ("starting", "ready"):
                    self._process.wait()
                    self._fail(f"the correction worker exited with status {self._process.returncode}")
                continue
            if answer.get("op") == "ready":
                self.readyAnswer = answer
                if answer.get("ok"):
                    self.state = "ready"
                else:
                    self._fail(str(answer.get("error")))
            elif answer.get("op") == "shutdown" and answer.get("ok"):
                self.state = "stopped"
            answers.append(answer)
        return answers

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the next answer (for tests and scripts); raises TimeoutError or RuntimeError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no answer from the correction worker within {timeout} s") from None
            self._answers.put(answer)  # let poll() account for it (state, end of stream)
            for polled in self.poll():
                return polled
            if not self.alive:
                raise RuntimeError(self.errorMessage)

    def _fail(self, message: str) -> None:
        tail = "\n".join(self._stderrTail[-8:])
        self.state = "failed"
        self.errorMessage = message + (f"; its last output:\n{tail}" if tail else "")

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Ask the worker to exit and wait for it; kills it when it does not within ``timeout``. The exit status."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self._process.stdin.close()
                self._process.wait(timeout=timeout)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                killProcessTree(self._process, timeout)
        if self.state in ("starting", "ready"):
            self.state = "stopped"
        return self._process.returncode

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the worker and what it started (Cancel); safe to call twice."""
        if self.state in ("starting", "ready"):
            self.state = "cancelled"
            self.errorMessage = "cancelled by the user"
        killProcessTree(self._process, timeout)
