"""The real, slice-labelled chest CTs of ``../shared/data`` (COVID-CT-MD sample: P001, cap001, normal001).

One reader for every trainer and benchmark that uses them: hybrid backgrounds (``training.hybrid_cases``),
weak labels for the classifier and the segmenter, and the leave-one-patient-out evaluation. ``labels.json``
gives each case's class and, for P001 and cap001, the radiologists' per-slice infection labels, already
re-indexed so that index z is the NIfTI z index (z = 0 most inferior). normal001 has no slice labels
upstream; it is infection-free, so every slice is clear.

``exclude`` (patient ids, e.g. from ``--real-exclude P001``) leaves patients out, so that a model evaluated
on a patient never saw it (leave-one-patient-out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REAL_PATIENTS = ("P001", "cap001", "normal001")
REAL_GROUP_PREFIX = "real-"  # the split group of every case made from a real patient (hybrids, weak)


def real_group(patient: str) -> str:
    """The split group of a real patient's cases, so that a patient-level split keeps them on one side."""
    return f"{REAL_GROUP_PREFIX}{patient}"


@dataclass(frozen=True)
class RealCase:
    """One real CT with its class and per-z slice labels (1 infection, 0 clear)."""

    patient: str
    class_name: str  # as labels.json says it: "COVID-19", "CAP", "Normal"
    image_path: Path
    slice_labels: tuple[int, ...] | None  # None: the upstream set has none (normal: all clear)

    def labels_or_clear(self, n_slices: int) -> tuple[int, ...]:
        """The slice labels, or all clear for a normal case without labels."""
        if self.slice_labels is not None:
            if len(self.slice_labels) != n_slices:
                raise ValueError(f"{self.patient}: {len(self.slice_labels)} slice labels for {n_slices} slices")
            return self.slice_labels
        if self.class_name != "Normal":
            raise ValueError(f"{self.patient} ({self.class_name}) has no slice labels; only a normal case may omit them")
        return (0,) * n_slices


def parse_patients(text: str | None) -> frozenset[str]:
    """``"P001,cap001"`` -> the patient ids; every id must be one of ``REAL_PATIENTS``."""
    ids = frozenset(p.strip() for p in (text or "").split(",") if p.strip())
    unknown = sorted(ids - set(REAL_PATIENTS))
    if unknown:
        raise ValueError(f"unknown real patient(s) {unknown}; expected some of {list(REAL_PATIENTS)}")
    return ids


def covid_ct_md_sample(shared_data: Path, exclude: frozenset[str] | set[str] = frozenset()) -> list[RealCase]:
    """The COVID-CT-MD sample cases under ``shared_data/covid-ct-md`` (``labels.json``), minus ``exclude``."""
    folder = Path(shared_data) / "covid-ct-md"
    index = folder / "labels.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} is absent; expected the COVID-CT-MD sample of ../shared/data")
    cases = json.loads(index.read_text())["cases"]
    out = []
    for patient, info in cases.items():
        if patient in exclude:
            continue
        labels = info.get("slice_infection_label_by_nifti_z")
        out.append(RealCase(patient, info["class"], folder / info["file"],
                            tuple(int(v) for v in labels) if labels is not None else None))
    return out
