"""How a run reacts to being stopped: SIGINT, SIGTERM and SIGHUP end it cleanly, never halfway through a move.

Python turns SIGINT into ``KeyboardInterrupt`` but dies on SIGTERM/SIGHUP without running ``finally``
blocks, which would leave temp folders and a half-replaced output folder. ``stop_handlers`` (the
CLI uses it) makes all three raise :class:`Interrupted`, so the temp folder is deleted and the lock
released on the way out. ``deferred_stops`` holds those signals for the few milliseconds in which the
finished outputs are moved into place (and while a failed run cleans up), then acts on them: the output
folder is either as it was or completely new, never a mix.

``pause_point`` is a test-only hook: the signal tests set ``COVIDCT_TEST_PAUSE_AT`` to a stage name so the
CLI waits there, and signal it at a known moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PAUSE_ENV = "COVIDCT_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "COVIDCT_TEST_PAUSE_S"
PAUSED_MARK = "covidct-test-paused-at"


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is the shell's convention, 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted_message(e: KeyboardInterrupt) -> str:
    """The CLI's one line for a stopped run."""
    return f"{e if isinstance(e, Interrupted) else 'interrupted'}; the output folder was left as it was"


def interrupted_exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number (130 for a plain Ctrl-C), the shell's convention."""
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    """Inside the block SIGTERM, SIGHUP and SIGINT raise :class:`Interrupted` (an ignored SIGINT, as under
    ``nohup``, stays ignored); the previous handlers come back after it. Main thread only (else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        if not (s == signal.SIGINT and previous[s] == signal.SIG_IGN):
            signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        _restore(previous)


def _restore(previous: dict) -> None:
    """Put back the handlers that were in place before (None: set from C, which Python cannot restore)."""
    for s, handler in previous.items():
        if handler is not None:
            signal.signal(s, handler)


def _act_on(signum: int, handler) -> None:
    """Do what ``handler`` (the one in place before the deferral) would have done with ``signum``."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # the default action (end the process), now that the move is done


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP inside the block and act on the first one after it.

    Only the main thread can set handlers; elsewhere (Slicer's worker threads) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler is not None and handler != signal.SIG_IGN:
            signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        _restore(previous)
        if pending:
            _act_on(pending[0], previous[pending[0]])


def pause_point(name: str) -> None:
    """Test-only: wait here when ``$COVIDCT_TEST_PAUSE_AT`` is ``name`` (tests send a signal meanwhile)."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"{PAUSED_MARK} {name}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "30")))
