"""Parsing the JSON-lines progress protocol of ``covidct analyze --progress json``.

The protocol is defined in ``CovidCTAnalysisLib/progress.py``; readers ignore
unknown events and keys. Lines that are not JSON objects (Python warnings,
tracebacks, library prints) become ``log`` events so that the log box keeps the
full output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One parsed line: ``kind`` is step, log, done, error or output (non-JSON text)."""

    kind: str
    message: str = ""
    fraction: float | None = None
    step: str = ""
    level: str = "info"
    report: str | None = None
    exitCode: int | None = None
    stream: str = "stdout"


KNOWN_EVENTS = ("step", "log", "done", "error")


def parseProgressLine(line: str, stream: str = "stdout") -> ProgressEvent | None:
    """Parse one output line; None for blank lines and JSON events of unknown kind."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or "event" not in obj:
        return ProgressEvent(kind="output", message=text, stream=stream)
    kind = obj.get("event")
    if kind not in KNOWN_EVENTS:
        return None
    fraction = obj.get("fraction")
    try:
        fraction = None if fraction is None else min(max(float(fraction), 0.0), 1.0)
    except (TypeError, ValueError):
        fraction = None
    exitCode = obj.get("exit_code")
    return ProgressEvent(
        kind=kind,
        message=str(obj.get("message", "")),
        fraction=fraction,
        step=str(obj.get("step", "")),
        level=str(obj.get("level", "error" if kind == "error" else "info")),
        report=obj.get("report"),
        exitCode=int(exitCode) if isinstance(exitCode, (int, float)) else None,
        stream=stream,
    )


def formatLogLine(event: ProgressEvent) -> str:
    """The line the log box shows for an event."""
    if event.kind == "step":
        percent = "" if event.fraction is None else f"[{int(round(100 * event.fraction)):3d}%] "
        return f"{percent}{event.message or event.step}"
    if event.kind == "log":
        return event.message if event.level == "info" else f"{event.level}: {event.message}"
    if event.kind == "error":
        return f"error: {event.message}"
    if event.kind == "done":
        return f"done: {event.report}" if event.report else "done"
    return event.message
