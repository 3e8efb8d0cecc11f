"""The scans of a cohort and their ids: folders searched recursively, or a ``scan_id,path`` manifest.

A scan is an image file (NIfTI, NRRD, MHA/MHD) or a folder that directly holds DICOM files (one
DICOM series folder; the loader picks the CT series inside). Ids come from the path relative to the
input folder, so they are readable and the same on every run; where two paths would give the same
id, each of them gets a short hash of its full path. ``select_part`` splits the list for job arrays
the way nnU-Net's ``num_parts``/``part_id`` does.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.load import FORMATS, file_format

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MANIFEST_COLUMNS = ("scan_id", "path")


@dataclass(frozen=True)
class Scan:
    scan_id: str
    path: str  # absolute


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _find_in(root: Path) -> list[Path]:
    """Image files and DICOM folders under ``root`` (hidden entries skipped)."""
    found: list[Path] = []
    dicom_here = False
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_find_in(entry))
        elif file_format(entry) is not None:
            found.append(entry)
        elif not dicom_here and _looks_like_dicom(entry):
            dicom_here = True
    return ([root] if dicom_here else []) + found


def _readable_id(rel: Path) -> str:
    name = rel.as_posix()
    for suffix in FORMATS:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    text = _UNSAFE.sub("_", name.replace("/", "__")).strip("._-")
    return text[:120] or "scan"


def _short_hash(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:8]


def assign_ids(items: list[tuple[Path, Path]]) -> list[Scan]:
    """``(root, path)`` pairs -> scans with readable ids; colliding ids all get ``-<hash of the full path>``."""
    base = [(_readable_id(p.relative_to(root)) if p != root else _readable_id(Path(root.name)), p)
            for root, p in items]
    counts: dict[str, int] = {}
    for sid, _ in base:
        counts[sid.lower()] = counts.get(sid.lower(), 0) + 1  # case-insensitive file systems
    scans = [Scan(sid if counts[sid.lower()] == 1 else f"{sid}-{_short_hash(p)}", str(p)) for sid, p in base]
    return sorted(scans, key=lambda s: s.scan_id)


def find_scans(folders: list[str | Path]) -> list[Scan]:
    """Every scan under ``folders`` (a folder that is itself a DICOM series, or an image file, counts too)."""
    items: list[tuple[Path, Path]] = []
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        if root.is_file():
            if file_format(root) is None:
                raise InputError(f"input {root} is not a folder nor an image file ({sorted(FORMATS)}); give folders "
                                 "of scans, image files, or --manifest CSV")
            items.append((root.parent, root))
        elif root.is_dir():
            items.extend((root, p) for p in _find_in(root))
        else:
            raise InputError(f"input {root} does not exist; expected a folder of scans (or --manifest CSV)")
    seen: set[Path] = set()
    unique = [(r, p) for r, p in items if not (p in seen or seen.add(p))]
    if not unique:
        raise InputError(f"no scans found in {', '.join(str(f) for f in folders)}; expected image files "
                         f"({', '.join(sorted(FORMATS))}) or DICOM series folders")
    return assign_ids(unique)


def read_manifest(path: str | Path) -> list[Scan]:
    """Scans from a CSV with columns ``scan_id,path`` (paths relative to the CSV's folder)."""
    path = Path(path).expanduser().resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"--manifest {path} has columns {reader.fieldnames}; expected {list(MANIFEST_COLUMNS)}")
            rows = list(reader)
    except OSError as e:
        raise InputError(f"--manifest {path} cannot be read ({e.strerror}); expected a CSV file") from e
    scans, seen = [], set()
    for n, row in enumerate(rows, start=2):
        sid, p = (row["scan_id"] or "").strip(), (row["path"] or "").strip()
        if not SAFE_ID.match(sid):
            raise InputError(f"--manifest {path} line {n}: scan_id {sid!r} is not usable as a folder name; expected "
                             "letters, digits, '.', '_' or '-' (starting with a letter or digit)")
        if sid.lower() in seen:
            raise InputError(f"--manifest {path} line {n}: scan_id {sid!r} appears twice; ids must be unique")
        seen.add(sid.lower())
        full = (path.parent / p).resolve() if p else None
        if full is None or not full.exists():
            raise InputError(f"--manifest {path} line {n}: path {p!r} does not exist (relative paths start at "
                             f"{path.parent})")
        scans.append(Scan(sid, str(full)))
    if not scans:
        raise InputError(f"--manifest {path} lists no scans")
    return sorted(scans, key=lambda s: s.scan_id)


def select_part(scans: list[Scan], num_parts: int, part_id: int) -> list[Scan]:
    """Part ``part_id`` of ``num_parts`` (every ``num_parts``-th scan by id, from ``part_id``)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--num-parts {num_parts} --part-id {part_id}: expected num-parts >= 1 and "
                         f"0 <= part-id < num-parts")
    return scans[part_id::num_parts]
