"""Scan a folder for DICOM image instances and group them into series.

Only headers are read (``stop_before_pixels``). Files that are not DICOM
images (notes, thumbnails, a DICOMDIR, structured reports) are set aside with a
reason, so the caller can say what it ignored. Nothing here logs or returns
patient identifiers: series are described by number, description, modality,
image count and UID, and instance files are never named (their names often
carry the patient ID).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

# Media Storage Directory Storage: a DICOMDIR index, not an image.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UUID_LIKE = re.compile(r"^[0-9A-Za-z]+(-[0-9A-Za-z]+)+$")


@dataclass(frozen=True)
class InstanceHeader:
    """The header fields of one image instance that loading and SEG export need."""

    path: Path
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    series_number: int | None
    series_description: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient
    position: tuple[float, float, float] | None  # ImagePositionPatient
    instance_number: int | None
    gantry_tilt: float | None
    number_of_frames: int
    rescale: tuple[float, float]  # (slope, intercept)

    @property
    def is_localizer(self) -> bool:
        return any(t.upper() == "LOCALIZER" for t in self.image_type)


@dataclass
class SeriesGroup:
    """The instances of one series (grouped by SeriesInstanceUID, or by a fallback key)."""

    key: str
    instances: list[InstanceHeader]

    @property
    def first(self) -> InstanceHeader:
        return self.instances[0]

    @property
    def modality(self) -> str:
        return self.first.modality

    @property
    def series_instance_uid(self) -> str:
        return self.first.series_instance_uid

    @property
    def is_localizer(self) -> bool:
        return any(i.is_localizer for i in self.instances)

    @property
    def is_axial(self) -> bool:
        """True when the slice normal is within 45 degrees of the patient's S-I axis."""
        o = self.first.orientation
        if not o or len(o) != 6:
            return False
        normal_z = o[0] * o[4] - o[1] * o[3]  # z component of row x column
        return abs(normal_z) >= 0.7071

    def describe(self) -> str:
        """One line naming the series without patient identifiers."""
        f = self.first
        number = f"series {f.series_number}" if f.series_number is not None else "series (no number)"
        desc = f" '{f.series_description}'" if f.series_description else ""
        n = len(self.instances)
        return (f"{f.modality or 'unknown modality'} {number}{desc} ({n} image{'s' if n != 1 else ''}, "
                f"SeriesInstanceUID {format_uid(f.series_instance_uid)})")


@dataclass(frozen=True)
class ScanResult:
    series: list[SeriesGroup]
    ignored: list[str]  # human lines: what was ignored and why
    n_files: int


def _is_valid_uid(value: str) -> bool:
    # IGNORE: pydicom's UID() would otherwise log the invalid value in full.
    return UID(value, validation_mode=pydicom.config.IGNORE).is_valid


def format_uid(value: str | None) -> str:
    """A UID for messages: valid ones in full, damaged ones shortened.

    Damaged UIDs (e.g. UUID strings made from a patient ID by a poor anonymiser)
    may carry identifiers, so only their first four characters are shown.
    """
    if value is None:
        return "missing"
    value = str(value).strip()
    if not value:
        return "blank"
    if _is_valid_uid(value):
        return value
    return f"'{value[:4]}...' ({len(value)} characters)"


def uid_problem(value: str | None) -> str | None:
    """Why ``value`` is not a valid DICOM UID, or None when it is."""
    if value is None:
        return "missing"
    value = str(value).strip()
    if not value:
        return "blank"
    if _is_valid_uid(value):
        return None
    if _UUID_LIKE.match(value):
        return "not a valid DICOM UID (UUID string)"
    if len(value) > 64:
        return "not a valid DICOM UID (longer than 64 characters)"
    if not re.fullmatch(r"[0-9.]+", value):
        return "not a valid DICOM UID (characters other than digits and dots)"
    return "not a valid DICOM UID (empty or zero-padded component)"


@contextlib.contextmanager
def quiet_value_checks() -> Iterator[None]:
    """Stop pydicom from logging invalid values while we read headers.

    pydicom's default reading mode warns *and logs* each invalid value in full,
    e.g. a UUID-style UID made from the patient ID; our own messages say what is
    wrong with shortened values instead.
    """
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = before


def read_header(path: Path) -> tuple[InstanceHeader | None, str | None]:
    """Read one file's header. Returns (header, None) or (None, why it is not a DICOM image)."""
    with quiet_value_checks():
        return _read_header(path)


def _read_header(path: Path) -> tuple[InstanceHeader | None, str | None]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not DICOM"
    except Exception as exc:  # truncated or corrupt files: report the kind, not the content
        return None, f"unreadable as DICOM ({type(exc).__name__})"
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class and meta is not None:
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None, "DICOMDIR (a directory index, not an image)"
    if "Rows" not in ds or "Columns" not in ds:
        return None, f"DICOM without an image (Modality {display_text(ds.get('Modality', 'unknown'), 16)})"
    return InstanceHeader(
        path=path,
        modality=display_text(ds.get("Modality", ""), 16).upper(),
        sop_class_uid=sop_class,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        series_number=_int(ds.get("SeriesNumber")),
        series_description=display_text(ds.get("SeriesDescription", ""), 64),
        image_type=tuple(str(t) for t in (ds.get("ImageType") or ())),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        instance_number=_int(ds.get("InstanceNumber")),
        gantry_tilt=_float(ds.get("GantryDetectorTilt")),
        number_of_frames=_int(ds.get("NumberOfFrames")) or 1,
        rescale=(_float(ds.get("RescaleSlope")) or 1.0, _float(ds.get("RescaleIntercept")) or 0.0),
    ), None


def scan_files(paths: Iterable[Path]) -> tuple[list[InstanceHeader], list[tuple[Path, str]]]:
    """Headers of the DICOM images among ``paths`` and (path, reason) for the rest."""
    headers: list[InstanceHeader] = []
    rejected: list[tuple[Path, str]] = []
    for p in paths:
        h, why = read_header(p)
        if h is None:
            rejected.append((p, why or "not DICOM"))
        else:
            headers.append(h)
    return headers, rejected


def scan_folder(folder: Path) -> ScanResult:
    """Find every DICOM image under ``folder`` (recursively) and group them by series."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    headers, rejected = scan_files(files)
    ignored = _describe_rejected(folder, rejected)
    groups: dict[str, SeriesGroup] = {}
    for h in headers:
        key = series_key(h)
        groups.setdefault(key, SeriesGroup(key, [])).instances.append(h)
    return ScanResult(list(groups.values()), ignored, len(files))


def series_key(h: InstanceHeader) -> str:
    """SeriesInstanceUID (or, when blank as in badly anonymised data, what else identifies a series),
    plus the image plane and size: a series that also holds a localizer or a reformat in another
    orientation is split into stacks, each of which can be chosen or skipped on its own."""
    orient = tuple(round(v, 3) + 0.0 for v in h.orientation) if h.orientation else None
    plane = f"{orient}|{h.rows}x{h.columns}"
    if h.series_instance_uid:
        return f"{h.series_instance_uid}|{plane}"
    return f"no-uid|{h.modality}|{h.series_number}|{h.series_description}|{h.frame_of_reference_uid}|{plane}"


def _describe_rejected(folder: Path, rejected: list[tuple[Path, str]]) -> list[str]:
    """Group ignored files by reason. Non-DICOM files are named (they are the user's notes,
    thumbnails...); DICOM files are only counted, since their names may carry identifiers."""
    by_reason: dict[str, list[Path]] = {}
    for p, why in rejected:
        by_reason.setdefault(why, []).append(p)
    lines = []
    for why, paths in by_reason.items():
        n = len(paths)
        what = f"{n} file{'s' if n != 1 else ''}"
        if why in ("not DICOM",) or why.startswith("DICOMDIR") or why.startswith("unreadable"):
            names = ", ".join(_rel(folder, p) for p in paths[:5]) + (", ..." if n > 5 else "")
            lines.append(f"ignored {what}: {why}: {names}")
        else:
            lines.append(f"ignored {what}: {why}")
    return lines


def _rel(folder: Path, p: Path) -> str:
    try:
        return str(p.relative_to(folder))
    except ValueError:
        return p.name


def display_text(value, limit: int) -> str:
    """A DICOM text value fit for one log line, a message and report.json: control characters (newlines,
    escape sequences, NUL) become spaces, runs of space one, and more than ``limit`` characters (the VR's
    own maximum: 64 for LO, 16 for CS) are cut with an ellipsis. Markup stays as written: JSON escapes it,
    and the Slicer panel shows these strings as plain text."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(value or "")).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None
