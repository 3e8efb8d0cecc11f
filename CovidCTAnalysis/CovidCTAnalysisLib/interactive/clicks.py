"""Clicks: points in patient coordinates (LPS mm) that add or remove lesion.

A click comes from ``--add-point X,Y,Z`` / ``--remove-point`` (LPS mm) or from a Slicer
markups file (``.mrk.json``): every markups list of type ``Fiducial``, in its own
``coordinateSystem`` (``LPS`` or ``RAS``, converted here), and only the control points whose
``positionStatus`` is ``defined`` (Slicer also saves ``preview`` and ``undefined`` ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import LABEL_NAMES, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError

ADD, REMOVE = "add", "remove"
LUNG_LABELS = (LEFT_LUNG, RIGHT_LUNG, LESION)  # lesion voxels are lung too (taken out of 1/2)


@dataclass(frozen=True)
class Click:
    """One click: ``kind`` "add" (positive) or "remove" (negative), ``lps`` in mm, and where it came from."""

    kind: str
    lps: tuple[float, float, float]
    source: str

    @property
    def positive(self) -> bool:
        return self.kind == ADD

    def describe(self) -> str:
        x, y, z = self.lps
        return f"{self.kind} click {self.source} at LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"

    def as_report(self) -> dict:
        return {"kind": self.kind, "lps_mm": [round(float(v), 3) for v in self.lps], "source": self.source}

    @classmethod
    def from_report(cls, entry: dict) -> Click:
        return cls(str(entry["kind"]), tuple(float(v) for v in entry["lps_mm"]), str(entry.get("source", "")))


def parse_point(text: str, kind: str, number: int) -> Click:
    """``"X,Y,Z"`` (LPS mm) → ``Click``; refuses anything else naming the value."""
    flag = f"--{kind}-point"
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"{flag} {text!r} is not a point; expected three numbers X,Y,Z in LPS mm, e.g. 12.5,-40,-110")
    return Click(kind, (values[0], values[1], values[2]), f"{flag} #{number}")


def read_markups(path: str | Path, kind: str) -> list[Click]:
    """The defined control points of a Slicer ``.mrk.json`` file as clicks of ``kind`` (LPS mm)."""
    path = Path(path)
    what = f"markups file {path}"
    if not path.is_file():
        raise InputError(f"{what} does not exist; expected a Slicer .mrk.json point list")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} is not valid JSON ({e}); expected a Slicer .mrk.json point list") from e
    lists = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(lists, list) or not lists:
        raise InputError(f"{what} has no 'markups' list; expected a Slicer .mrk.json file (saved by Slicer 4.11+)")
    clicks: list[Click] = []
    for m, markup in enumerate(lists):
        if not isinstance(markup, dict) or markup.get("type") != "Fiducial":
            got = markup.get("type") if isinstance(markup, dict) else markup
            raise InputError(f"{what}: markups[{m}] is of type {got!r}; expected a point list (type 'Fiducial')")
        system = markup.get("coordinateSystem")
        if system not in ("LPS", "RAS"):
            raise InputError(f"{what}: markups[{m}].coordinateSystem is {system!r}; expected 'LPS' or 'RAS'")
        units = markup.get("coordinateUnits", "mm")
        if units != "mm":
            raise InputError(f"{what}: markups[{m}].coordinateUnits is {units!r}; expected 'mm'")
        for p, point in enumerate(markup.get("controlPoints") or []):
            status = point.get("positionStatus", "defined") if isinstance(point, dict) else None
            if status != "defined":
                continue  # preview/undefined points are not placed yet
            pos = point.get("position")
            if not isinstance(pos, list) or len(pos) != 3 or not all(
                    isinstance(v, (int, float)) and np.isfinite(v) for v in pos):
                raise InputError(f"{what}: markups[{m}].controlPoints[{p}].position is {pos!r}; expected [x, y, z]")
            x, y, z = (float(v) for v in pos)
            lps = (-x, -y, z) if system == "RAS" else (x, y, z)
            label = point.get("label") or point.get("id") or str(p)
            clicks.append(Click(kind, lps, f"{path.name}:{label}"))
    return clicks


def voxel_of(image: sitk.Image, lps) -> tuple[int, int, int] | None:
    """The (x, y, z) index of the voxel holding the LPS point, or None when it lies outside the image."""
    ci = image.TransformPhysicalPointToContinuousIndex([float(v) for v in lps])
    idx = tuple(int(np.floor(c + 0.5)) for c in ci)
    if any(i < 0 or i >= s for i, s in zip(idx, image.GetSize(), strict=True)):
        return None
    return idx  # type: ignore[return-value]


def check_clicks(image: sitk.Image, labels: np.ndarray, clicks: list[Click]) -> None:
    """Refuse clicks outside the image and positive clicks outside the lungs (``labels`` (z, y, x))."""
    if not clicks:
        raise InputError("no clicks given; add points with --add/--remove (a .mrk.json file) or --add-point X,Y,Z")
    for click in clicks:
        idx = voxel_of(image, click.lps)
        if idx is None:
            raise InputError(f"{click.describe()} lies outside the image (size {image.GetSize()}, origin "
                             f"{tuple(round(v, 1) for v in image.GetOrigin())} mm); place the point on the scan")
        value = int(labels[idx[2], idx[1], idx[0]])
        if click.positive and value not in LUNG_LABELS:
            name = LABEL_NAMES.get(value, "outside the lungs (background)")
            raise InputError(f"{click.describe()} (voxel {idx}) lies outside the lungs ({name}); lesion is only "
                             "added within the lungs, so place add clicks on lung")
