"""Writing files and folders atomically, and JSON that refuses NaN: the one place for both.

A reader never sees a half-written file: everything is written under a hidden temp name beside
its target (same folder, so the same file system) and renamed onto it with ``os.replace``, which
is atomic. On any error the temp file or folder is removed and the target is left as it was.

JSON documents (reports, model metadata, training summaries) refuse NaN and infinity: strict
JSON readers reject them, and a NaN Dice in ``metadata.json`` would read as a number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix, for writers that go by it); on success it is
    renamed onto ``path``, on error removed. The parent folder must exist.

    >>> with atomic_path(out / "image.nii.gz") as tmp:   # doctest: +SKIP
    ...     sitk.WriteImage(image, str(tmp))
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    # not mkstemp: its 0600 mode would stay on the target; the writer creates the file with the usual mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _first_non_finite(obj: Any, where: str = "$") -> str | None:
    """JSON path of the first NaN/inf in ``obj`` (for the error message), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    if isinstance(obj, dict):
        items = ((f"{where}.{k}", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for sub_where, value in items:
        found = _first_non_finite(value, sub_where)
        if found:
            return found
    return None


def json_text(obj: Any, *, sort_keys: bool = False) -> str:
    """``obj`` as indented JSON text with a final newline; NaN and infinity raise ``ValueError``
    naming where they are (write None for "no value")."""
    try:
        return json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    except ValueError as exc:
        where = _first_non_finite(obj)
        raise ValueError(f"cannot write JSON: {where} is not a finite number ({exc}); "
                         "write None (null) for a missing value") from exc


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (UTF-8, indented, NaN refused: see ``json_text``) to ``path`` atomically."""
    return write_text(path, json_text(obj, sort_keys=sort_keys))


def replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after
    (put back if the rename fails)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temp_dir_beside(path: Path) -> Path:
    """A new hidden, empty folder in ``path``'s parent (created if missing), for building ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it replaces ``path`` (a whole-folder
    swap: an old ``path`` is removed), on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
