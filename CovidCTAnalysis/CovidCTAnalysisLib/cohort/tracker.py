"""Progress of a cohort: done / failed / remaining and the throughput, as a bar, plain lines or JSON lines.

JSON lines (``--progress json``), one object per line on stdout:

    {"event": "start", "total": 120, "to_run": 80, "skipped": 40, "engine": "dask LocalCluster, 2 workers"}
    {"event": "scan", "scan_id": "p01", "status": "ok", "error": null, "attempts": 1, "duration_s": 7.1,
     "done": 41, "failed": 0, "remaining": 79, "scans_per_hour": 506.2}
    {"event": "log", "level": "warning", "message": "..."}
    {"event": "done", "ok": 119, "failed": 1, "summary": "OUT/summary.csv", "report": "OUT/report.html"}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class CohortTracker:
    """Counts finished scans of this run and renders them (``mode``: bar, plain, json, none, auto)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.ok = self.failed = self.to_run = 0
        self.t0 = time.perf_counter()
        self._bar = None

    def _emit(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    @property
    def remaining(self) -> int:
        return self.to_run - self.ok - self.failed

    def scans_per_hour(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return 3600.0 * (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def start(self, total: int, to_run: int, engine: str) -> None:
        self.to_run, self.t0 = to_run, time.perf_counter()
        skipped = total - to_run
        if self.mode == "json":
            self._emit({"event": "start", "total": total, "to_run": to_run, "skipped": skipped, "engine": engine})
        elif self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=to_run, file=self.stream, unit="scan", dynamic_ncols=True)
            self.log(f"{total} scans, {skipped} already done, {to_run} to run on {engine}")
        elif self.mode == "plain":
            self.log(f"{total} scans, {skipped} already done, {to_run} to run on {engine}")

    def scan(self, status: dict[str, Any]) -> None:
        if status.get("status") == "ok":
            self.ok += 1
        else:
            self.failed += 1
        rate = self.scans_per_hour()
        if self.mode == "json":
            self._emit({"event": "scan", **{k: status.get(k) for k in ("scan_id", "status", "error", "attempts",
                                                                        "duration_s")},
                        "done": self.ok, "failed": self.failed, "remaining": self.remaining,
                        "scans_per_hour": round(rate, 1)})
        elif self.mode == "bar" and self._bar is not None:
            if status.get("status") != "ok":
                self.log(f"FAILED {status.get('scan_id')}: {status.get('error')}", "warning")
            self._bar.set_postfix_str(f"done {self.ok}, failed {self.failed}, remaining {self.remaining}, "
                                      f"{rate:.0f} scans/h", refresh=False)
            self._bar.update(1)  # draws the bar with the new counts
        elif self.mode == "plain":
            what = "ok" if status.get("status") == "ok" else f"FAILED: {status.get('error')}"
            print(f"[{self.ok + self.failed}/{self.to_run}] {status.get('scan_id')} {what} "
                  f"(done {self.ok}, failed {self.failed}, remaining {self.remaining}, {rate:.0f} scans/h)",
                  file=self.stream, flush=True)

    def log(self, message: str, level: str = "info") -> None:
        if self.mode == "json":
            self._emit({"event": "log", "level": level, "message": message})
        elif self.mode == "bar" and self._bar is not None:
            self._bar.write(message if level == "info" else f"{level}: {message}", file=self.stream)
        elif self.mode != "none":
            print(message if level == "info" else f"{level}: {message}", file=self.stream, flush=True)

    def done(self, ok: int, failed: int, summary: str, report: str) -> None:
        self.close()
        if self.mode == "json":
            self._emit({"event": "done", "ok": ok, "failed": failed, "summary": summary, "report": report})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
