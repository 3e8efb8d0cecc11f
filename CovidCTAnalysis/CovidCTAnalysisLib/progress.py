"""Progress reporting: a bar on a terminal, JSON lines for the Slicer module.

Protocol of ``--progress json`` (one object per line on stdout, flushed):

    {"event": "step", "step": "classify", "fraction": 0.35, "message": "Classifying 120 lung slices"}
    {"event": "log", "level": "warning", "message": "..."}
    {"event": "done", "report": "/out/report.json", "fraction": 1.0}
    {"event": "error", "message": "...", "exit_code": 2}

``fraction`` is the overall fraction in [0, 1]. Readers must ignore unknown
events and keys. The Slicer module parses exactly this, nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO


class Progress:
    """Base reporter: silent. Subclasses render the same calls differently."""

    def step(self, step: str, fraction: float, message: str = "") -> None:
        pass

    def log(self, message: str, level: str = "info") -> None:
        pass

    def done(self, report_path: str | None = None) -> None:
        pass

    def error(self, message: str, exit_code: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLinesProgress(Progress):
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def step(self, step: str, fraction: float, message: str = "") -> None:
        self._emit({"event": "step", "step": step, "fraction": round(float(fraction), 4), "message": message})

    def log(self, message: str, level: str = "info") -> None:
        self._emit({"event": "log", "level": level, "message": message})

    def done(self, report_path: str | None = None) -> None:
        self._emit({"event": "done", "report": report_path, "fraction": 1.0})

    def error(self, message: str, exit_code: int = 1) -> None:
        self._emit({"event": "error", "message": message, "exit_code": exit_code})


class BarProgress(Progress):
    """tqdm bar on stderr (a terminal); messages go above the bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=100, file=stream or sys.stderr, unit="%", bar_format="{l_bar}{bar}| {elapsed}")
        self._tqdm = tqdm

    def step(self, step: str, fraction: float, message: str = "") -> None:
        self._bar.set_description_str(message or step)
        self._bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self._bar.refresh()

    def log(self, message: str, level: str = "info") -> None:
        self._tqdm.write(f"[{level}] {message}" if level != "info" else message, file=self._bar.fp)

    def done(self, report_path: str | None = None) -> None:
        self.step("done", 1.0, "Done")

    def error(self, message: str, exit_code: int = 1) -> None:
        self._tqdm.write(f"error: {message}", file=self._bar.fp)

    def close(self) -> None:
        self._bar.close()


class PlainProgress(Progress):
    """Line-per-step text for logs and pipes (no carriage returns)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def step(self, step: str, fraction: float, message: str = "") -> None:
        print(f"[{int(round(100 * fraction)):3d}%] {message or step}", file=self.stream, flush=True)

    def log(self, message: str, level: str = "info") -> None:
        print(message if level == "info" else f"{level}: {message}", file=self.stream, flush=True)

    def error(self, message: str, exit_code: int = 1) -> None:
        print(f"error: {message}", file=self.stream, flush=True)


def make_progress(mode: str = "auto") -> Progress:
    """``auto``: a bar on a terminal, plain lines otherwise; ``json``; ``none``."""
    if mode == "json":
        return JsonLinesProgress()
    if mode == "none":
        return Progress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return PlainProgress()
