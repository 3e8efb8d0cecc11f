"""One scan of a cohort: analysed into a temp folder, ``status.json`` added, then moved in as ``scans/<id>``.

``OUT/scans/<id>/`` is what ``covidct analyze`` writes plus ``status.json`` (``status`` ok|failed, ``error``,
``duration_s``, ``attempts``). A scan counts as done only when its ``status.json`` says ok, and the folder
appears in one rename, so a half-written scan never counts. Each attempt is recorded in
``scans/.<id>.attempts`` first, so a retried scan (its worker died) says how many attempts it took.

In a worker process (``isolate=True``) a watchdog thread ends the process when the scan runs past the
timeout or the worker's memory limit, after noting why in the attempts file; the engine then sees a dead
worker, and the next attempt finds the note and records the failure instead of running the scan again.
The loaded models stay in this process's ``MODEL_CACHE`` for the next scan.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib.cohort.settings import AnalysisSettings
from CovidCTAnalysisLib.errors import CovidCTError
from CovidCTAnalysisLib.files import replace_dir, write_json
from CovidCTAnalysisLib.models.cache import ModelCache

STATUS_JSON = "status.json"
SCANS = "scans"
WATCHDOG_FRACTION = 0.9  # the watchdog ends a worker at 90 % of its memory limit (and says why); Dask's nanny kills at 98 %
KILLED_EXIT = 70  # exit status of a worker the watchdog ends (timeout or memory)
MODEL_CACHE = ModelCache()  # one per process: each worker loads its models once
_THREADS_SET: list[int] = []


def scan_dir(out: Path, scan_id: str) -> Path:
    return out / SCANS / scan_id


def attempts_file(out: Path, scan_id: str) -> Path:
    return out / SCANS / f".{scan_id}.attempts"


def read_attempts(out: Path, scan_id: str) -> list[dict[str, Any]]:
    path = attempts_file(out, scan_id)
    if not path.is_file():
        return []
    out_lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out_lines.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed process
    return out_lines


def _note_attempt(out: Path, scan_id: str, record: dict[str, Any]) -> None:
    path = attempts_file(out, scan_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_status(out: Path, scan_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((scan_dir(out, scan_id) / STATUS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_analyzer(spec: str) -> Callable[..., Any]:
    """``MODULE:FUNCTION`` -> the function (called like ``pipeline.analyze``)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CovidCTError(f"analyzer {spec!r} cannot be imported ({e}); expected MODULE:FUNCTION") from e


def set_threads(threads: int, method: str) -> None:
    """This process's share of the cores for ITK (and torch, when models run); once per process."""
    if _THREADS_SET == [threads] or threads < 1:
        return
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if method == "model":
        import torch

        torch.set_num_threads(threads)
    _THREADS_SET[:] = [threads]


def write_status(out: Path, scan_id: str, status: dict[str, Any], analysis: Path | None = None) -> dict[str, Any]:
    """Move ``analysis`` (or a new folder holding only the status) in as ``scans/<id>`` with ``status.json``."""
    folder = analysis
    if folder is None:
        folder = out / SCANS / f".{scan_id}.failed-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
    attempts = read_attempts(out, scan_id)
    status = {**status, "attempts": max(len([a for a in attempts if "start" in a]), 1)}
    status["retried"] = status["attempts"] > 1
    write_json(folder / STATUS_JSON, status)
    replace_dir(folder, scan_dir(out, scan_id))  # renames only: the scan appears complete or not at all
    attempts_file(out, scan_id).unlink(missing_ok=True)
    return status


def failed_status(scan_id: str, path: str, error: str, error_type: str, duration_s: float | None,
                  exit_code: int | None = None) -> dict[str, Any]:
    return {"scan_id": scan_id, "input": path, "status": "failed", "error": error, "error_type": error_type,
            "exit_code": exit_code, "duration_s": duration_s, "worker": f"{socket.gethostname()}:{os.getpid()}",
            "finished": time.time()}


def describe_error(e: BaseException) -> str:
    """One line: a ``CovidCTError``'s own message; for anything else (a bug) its type and where it was raised."""
    message = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, CovidCTError):
        return message
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {message}{at}"


class _Watchdog:
    """Ends this worker process when the scan passes ``timeout_s`` or RSS passes ``memory_limit`` bytes."""

    def __init__(self, out: Path, scan_id: str, timeout_s: float | None, memory_limit: int | None) -> None:
        self.out, self.scan_id, self.timeout_s, self.memory_limit = out, scan_id, timeout_s, memory_limit
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"covidct-watchdog-{scan_id}", daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _kill(self, why: str) -> None:
        _note_attempt(self.out, self.scan_id, {"killed": why, "pid": os.getpid(), "at": time.time()})
        os._exit(KILLED_EXIT)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            elapsed = time.monotonic() - self._t0
            if self.timeout_s and elapsed > self.timeout_s:
                self._kill(f"timed out: still running after {self.timeout_s:g} s (--timeout)")
            if self.memory_limit and os.path.exists("/proc/self/statm"):
                rss = self._rss()
                if rss > WATCHDOG_FRACTION * self.memory_limit:
                    self._kill(f"killed for memory: the worker used {rss / 2**30:.2f} GiB, over "
                               f"{WATCHDOG_FRACTION:.0%} of its limit of {self.memory_limit / 2**30:.2f} GiB "
                               "(--memory-limit)")

    def __enter__(self) -> _Watchdog:
        if self.timeout_s or self.memory_limit:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def run_scan(scan_id: str, path: str, out: str, settings: AnalysisSettings, *, threads: int = 0,
             timeout_s: float | None = None, memory_limit: int | None = None, run_id: str = "") -> dict[str, Any]:
    """Analyse one scan into ``out/scans/<scan_id>`` and return its status (never raises for a bad scan).

    ``timeout_s``/``memory_limit`` arm the watchdog, which ends this process: use them in worker processes only.
    ``run_id`` makes the task idempotent: Dask recomputes results lost with a dead worker, and a scan already
    finished by this run is then returned as it is, not analysed again.
    """
    out_p = Path(out)
    existing = read_status(out_p, scan_id) if run_id else None
    if existing is not None and existing.get("run_id") == run_id:
        return existing
    previous = [a for a in read_attempts(out_p, scan_id) if "killed" in a]
    if previous:  # an earlier attempt was ended by the watchdog: record that rather than run it again
        return write_status(out_p, scan_id, {**failed_status(scan_id, path, previous[-1]["killed"], "WorkerKilled",
                                                             None), "run_id": run_id})
    _note_attempt(out_p, scan_id, {"start": time.time(), "pid": os.getpid(), "host": socket.gethostname()})
    set_threads(threads, settings.method)
    tmp = out_p / SCANS / f".{scan_id}.tmp-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        analyzer = load_analyzer(settings.analyzer)
        with _Watchdog(out_p, scan_id, timeout_s, memory_limit):
            analyzer(path, tmp, progress=None, model_cache=MODEL_CACHE, **settings.analyze_kwargs())
    except Exception as e:  # noqa: BLE001 - one bad scan must not stop the cohort; the reason is recorded
        shutil.rmtree(tmp, ignore_errors=True)
        message = describe_error(e)
        return write_status(out_p, scan_id, {**failed_status(scan_id, path, message, type(e).__name__,
                                                             round(time.perf_counter() - t0, 3),
                                                             getattr(e, "exit_code", None)), "run_id": run_id})
    status = {"scan_id": scan_id, "input": path, "status": "ok", "error": None, "error_type": None,
              "exit_code": 0, "duration_s": round(time.perf_counter() - t0, 3),
              "worker": f"{socket.gethostname()}:{os.getpid()}", "finished": time.time(), "run_id": run_id}
    return write_status(out_p, scan_id, status, analysis=tmp)
