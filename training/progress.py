"""The one progress line of the training scripts: ``[step] <elapsed s> | message`` on stdout, flushed.

``RunContext.log`` (train_classifier, train_segmenter; rank 0 only), ``evaluate`` and ``tune_aggregation``
print through :func:`progress_line`. ``make demo``'s numbered headlines (``==> [demo n/N] ...``) keep their
own form: the Slicer training panel reads the step numbers from them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_progress(step: str, elapsed_s: float, message: str) -> str:
    return f"[{step}] {elapsed_s:7.1f}s | {message}"


def progress_line(step: str, message: str, started: float, stream: TextIO | None = None) -> None:
    """Print one progress line; ``started`` is the ``time.monotonic()`` the elapsed time counts from."""
    print(format_progress(step, time.monotonic() - started, message), file=stream or sys.stdout, flush=True)


def time_left_text(done: int, todo: int, started: float) -> str:
    """``", about 12 min left"`` after ``done`` of ``done + todo`` equal units (epochs) that began at ``started``
    (``time.monotonic()``); empty before the first is done or after the last."""
    if done <= 0 or todo <= 0:
        return ""
    left = (time.monotonic() - started) / done * todo
    return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
