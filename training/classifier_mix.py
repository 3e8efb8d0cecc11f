"""The classifier's real-data parts, mixed with phantoms: ``--dataset phantoms,hybrids,weak``.

``hybrids``  Real lesion-free CT backgrounds with synthetic lesions (``training.hybrid_cases``). The truth is
             exact, so slice labels come from it as for phantoms (``classifier_data.lesion_slice_labels``):
             lesion slices get the class of the lesion kind (covid -> COVID-19, pneumonia -> Pneumonia), clear
             slices train Normal and a lesion's tip trains neither (``classifier_slices``).
``weak``     The real COVID-CT-MD sample (``training.real_cases``): the patient's class from ``labels.json``
             (CAP -> Pneumonia); the radiologists' slice labels (1 infection, 0 clear, per NIfTI z) make the
             labelled slices train the patient's class and the clear ones Normal; normal001 trains Normal.

Every case of one real patient (its weak case and all hybrids on its backgrounds) has the group
``real-<patient>``. ``--real-exclude`` leaves patients out of both parts (leave-one-patient-out).

Which side of the split real patients go to: training, always (``split_real_in_training``). There are at most three, one
per class; a real patient in validation would be a patient the model never learns from, and the validation
accuracy (which only picks the best checkpoint) would rest on one patient's slices. Real patients are
evaluated instead by training without them (``--real-exclude``) and analysing them afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import CLASS_NAMES

from training.classifier_data import ClassifierCase, class_index, lesion_slice_labels
from training.phantom_cache import KIND_TO_CLASS
from training.real_cases import covid_ct_md_sample, real_group
from training.splits import Split, split_with_real_in_training

PARTS = ("phantoms", "hybrids", "weak")
REAL_PARTS = ("hybrids", "weak")


def parse_parts(text: str) -> list[str]:
    """``"phantoms,hybrids,weak"`` -> the parts, in that order; each one of ``PARTS``, none twice."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise ValueError(f"--dataset {text!r}: expected a comma-separated list of distinct parts from {list(PARTS)} "
                         f"(or one of the single layouts)")
    return parts


def hybrid_cases(shared_data: Path, kinds: list[str], seeds: list[int], cache_dir: Path,
                 exclude: frozenset[str] = frozenset(), log=None) -> list[ClassifierCase]:
    """Hybrid cases (real background + synthetic lesions) as classifier cases, minus ``exclude``'s patients."""
    from training.hybrid_cases import hybrid_seg_cases

    unknown = [k for k in kinds if k not in KIND_TO_CLASS or KIND_TO_CLASS[k] == "Normal"]
    if unknown:
        raise ValueError(f"--hybrid-kinds {unknown}: expected lesion kinds 'covid' and/or 'pneumonia'")
    cases = []
    for seg in hybrid_seg_cases(Path(shared_data), kinds, seeds, cache_dir, log, exclude=exclude):
        kind = next(k for k in kinds if f"-{k}-" in seg.case_id)  # "hybrid-<background>-<kind>-<seed>"
        labels = lesion_slice_labels(sitk.GetArrayFromImage(sitk.ReadImage(str(seg.label))))
        cases.append(ClassifierCase(patient_id=seg.case_id, class_index=class_index(KIND_TO_CLASS[kind]),
                                    source="hybrid", image=Path(seg.image), slice_labels=labels,
                                    truth=Path(seg.label), group=seg.group, part="hybrids"))
    return cases


def weak_cases(shared_data: Path, exclude: frozenset[str] = frozenset()) -> list[ClassifierCase]:
    """The real COVID-CT-MD sample with the radiologists' classes and slice labels, minus ``exclude``."""
    cases = []
    for real in covid_ct_md_sample(Path(shared_data), exclude):
        labels = None if real.slice_labels is None else np.asarray(real.slice_labels, dtype=np.uint8)
        cases.append(ClassifierCase(patient_id=f"real-{real.patient}", class_index=class_index(real.class_name),
                                    source="COVID-CT-MD sample (weak: patient class and slice labels)",
                                    image=real.image_path, slice_labels=labels, group=real_group(real.patient),
                                    part="weak"))
    return cases


def split_real_in_training(cases: list[ClassifierCase], train_fraction: float, seed: int) -> Split:
    """The usual patient-level split (``splits.split_cases``) of the other cases, with every case of the real
    parts (hybrids, weak: all cases of a real patient) in training (module doc)."""
    split = split_with_real_in_training([c.patient_id for c in cases], [c.group for c in cases],
                                        [c.class_index for c in cases], [c.part in REAL_PARTS for c in cases],
                                        train_fraction, seed)
    return split or Split(tuple(sorted(c.patient_id for c in cases)), (), seed, train_fraction)


def mix_summary(cases: list[ClassifierCase], slices: dict, excluded) -> dict:
    """Per part (``case.part``): cases, slices per class, the patients behind them; and the excluded real patients.

    ``slices`` maps case id -> ``classifier_slices.CaseSlices`` (its ``y``: the class of each slice)."""
    out = {}
    for part in dict.fromkeys(c.part for c in cases):
        cases_of_part = [c for c in cases if c.part == part]
        counts = np.zeros(len(CLASS_NAMES), dtype=int)
        for c in cases_of_part:
            counts += np.bincount(slices[c.patient_id].y, minlength=len(CLASS_NAMES))
        out[part] = {"cases": len(cases_of_part), "slices": dict(zip(CLASS_NAMES, counts.tolist(), strict=True)),
                     "patients": sorted({c.group for c in cases_of_part})}
    return {"parts": out, "real_excluded": sorted(excluded)}
