"""One run at a time per output folder: a lock that a crashed run cannot leave stuck.

The lock is ``.<name>.covidct-lock`` beside ``--output-dir`` (the folder itself may not exist yet and is
swapped in by a rename at the end). It is held with ``flock``: the kernel drops it when the holding process
ends, however it ends (SIGKILL, power loss of a client), so a file left behind by a crashed run is stale by
construction and is taken over; no pid guessing, which pid reuse would fool. The file records pid, host
name, start time and the command, so the refusal of a second run can say who holds the folder.

While the lock is held nothing else of ours writes beside the folder, so temp folders that crashed runs
left (``.<name>.tmp-*``, see ``outputs.atomic_output_dir``) are removed then.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from CovidCTAnalysisLib.errors import OutputError

LOCK_SUFFIX = ".covidct-lock"
TMP_MARK = ".tmp-"  # outputs.atomic_output_dir makes ``.<name>.tmp-XXXX`` beside the output folder


def lock_path(out_dir: Path) -> Path:
    """Where the lock of ``out_dir`` lives (beside it, hidden)."""
    return out_dir.parent / f".{out_dir.name}{LOCK_SUFFIX}"


def temp_prefix(out_dir: Path) -> str:
    """Name prefix of the temp folders made for ``out_dir``."""
    return f".{out_dir.name}{TMP_MARK}"


def _holder(path: Path) -> str:
    """Who holds the lock, in words, from the file's content (best effort: it may be half-written)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"process {int(info['pid'])} on {str(info['host'])[:64]}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(info['started'])))}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _remove_stale_temp_folders(out_dir: Path) -> list[str]:
    """Delete ``.<name>.tmp-*`` left by runs that died (SIGKILL) while writing; return their names."""
    removed = []
    for p in out_dir.parent.glob(temp_prefix(out_dir) + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _open_locked(path: Path, out: Path) -> int:
    """Open ``path`` and take its flock without waiting; retry if it was replaced meanwhile."""
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise OutputError(
                    f"--output-dir {out} is in use by {_holder(path)} "
                    f"(lock {path}); wait for that analysis to finish, or choose another folder") from e
            raise
        try:  # the holder we waited on may have unlinked this file; then lock the new one instead
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OutputError(f"could not take the lock {path}: it keeps being replaced; try again")


@contextlib.contextmanager
def output_lock(out_dir: str | Path) -> Iterator[list[str]]:
    """Hold the lock of ``out_dir`` for the ``with`` block; yield the names of stale temp folders removed.

    Refuses with :class:`OutputError` (naming the holder) when another live run holds it. Creates the
    parent folders it needs and removes those it created if they are still empty at the end.
    """
    out = Path(out_dir)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    path = lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path, out)
    except OSError as e:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise OutputError(f"cannot create the lock {path}: {e.strerror or e}; choose a writable --output-dir") from e
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)[:500]}
        with contextlib.suppress(OSError):  # the content only improves the message of a refused run
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        yield _remove_stale_temp_folders(out)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiter then re-checks the inode and retries
        os.close(fd)
        for folder in created:  # innermost first; only the empty ones go
            with contextlib.suppress(OSError):
                folder.rmdir()
