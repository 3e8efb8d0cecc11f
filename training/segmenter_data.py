"""Segmenter datasets, mapped into our labels (1 = patient's left lung, 2 = right lung, 3 = lesion).

``covid-ct-seg``  COVID-19-CT-Seg, 20 cases (Ma et al., "Towards Data-Efficient Learning: A
    Benchmark for COVID-19 CT Lung and Infection Segmentation", Med Phys 2021; data: Zenodo
    doi:10.5281/zenodo.3757476). Two layouts:
      Zenodo: ``COVID-19-CT-Seg_20cases/<case>.nii.gz`` with masks of the same name in
      ``Lung_and_Infection_Mask/``, ``Lung_Mask/``, ``Infection_Mask/``;
      Kaggle (andrewmvd/covid19-ct-scans): ``metadata.csv`` with columns ``ct_scan``,
      ``lung_mask``, ``infection_mask``, ``lung_and_infection_mask`` (paths whose last two parts
      are ``<folder>/<file>.nii`` under the dataset root).
    Label values, from the dataset authors' own evaluation script
    (github.com/JunMa11/COVID-19-CT-Seg-Benchmark, ``utils/COVID-19-Seg-Evaluation.py``: with
    three labels ``gt==1`` is scored as ``L-lungDSC``, ``gt==2`` as ``R-lungDSC`` and ``gt==3`` as
    ``LesionDSC``; with two labels 1/2 are left/right lung; with one label 1 is the lesion)
    and the benchmark README ("Annotations include left lung, right lung and infections"):
    Lung_and_Infection_Mask 0 background, 1 left lung, 2 right lung, 3 infection (identity map
    to ours); Lung_Mask 1 left, 2 right; Infection_Mask 1 infection. Because "left" is not
    stated as the patient's left anywhere in that documentation, ``check_sides`` compares the
    label centroids with patient coordinates (LPS +x = patient's left) and warns (or swaps
    with ``--sides fix``). The same README says the 10 Radiopaedia cases were "adjusted to lung
    window [-1250,250], and then normalized to [0,255]": such images are mapped back to HU.
``covid-19-20``  COVID-19-20 challenge: ``*_ct.nii.gz`` with ``*_seg.nii.gz`` (1 = lesion), 2 labels.
``phantoms``     The core's phantoms, whose truth is already in our labels.
``hybrids``      Real lesion-free CT from ``../shared/data`` (COVID-CT-MD normal001, the clear slices of
    P001 and cap001) with synthetic lesions painted in (``training.hybrid_cases.hybrid_seg_cases``);
    lung labels from the threshold method, lesion truth exact; grouped by real patient.
``weak``         The real COVID-CT-MD sample with labels from its slice labels: threshold lungs on clear slices,
    ``IGNORE_LABEL`` on infected ones (``training.segmenter_mix``; source "weak": only these may hold 255).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
from CovidCTAnalysisLib.loading.load import load_ct, read_image_file
from CovidCTAnalysisLib.masks import sides_reversed, swap_left_right

from training.phantom_cache import phantom_set

IGNORE_LABEL = 255  # "unknown here": weak labels (training.segmenter_mix) mark unlabelled voxels; the loss skips them
RADIOPAEDIA_WINDOW = (-1250.0, 250.0)  # Ma et al. README: lung window then scaled to 0..255
# Model channel names per mask kind (the core's model_folder matches these names).
CHANNEL_NAMES = {
    "lung_and_infection": {"0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"},
    "lung": {"0": "background", "1": "Left lung", "2": "Right lung"},
    "infection": {"0": "background", "1": "Lesion"},
}
_ZENODO_MASK_DIRS = {"lung_and_infection": "Lung_and_Infection_Mask", "lung": "Lung_Mask",
                     "infection": "Infection_Mask"}
_KAGGLE_COLUMNS = {"lung_and_infection": "lung_and_infection_mask", "lung": "lung_mask",
                   "infection": "infection_mask"}


@dataclass
class SegCase:
    case_id: str
    image: Path
    label: Path
    source: str
    lungs_labelled: bool  # label 1/2 are lungs (use them for the lung box)
    notes: list[str] = field(default_factory=list)
    group: str = ""  # the patient behind the case (phantoms of one seed are one patient)

    def __post_init__(self) -> None:
        self.group = self.group or self.case_id


def _nii_stem(p: Path) -> str:
    return p.name.split(".nii")[0]


def covid_ct_seg_cases(root: Path, layout: str = "auto", mask_kind: str = "lung_and_infection") -> list[SegCase]:
    """COVID-19-CT-Seg in its Zenodo or Kaggle layout (see module doc)."""
    root = Path(root)
    if mask_kind not in CHANNEL_NAMES:
        raise ValueError(f"mask kind {mask_kind!r}; expected one of {sorted(CHANNEL_NAMES)}")
    if layout == "auto":
        layout = "kaggle" if (root / "metadata.csv").is_file() else "zenodo"
    cases = []
    lungs = mask_kind != "infection"
    if layout == "zenodo":
        img_dir, mask_dir = root / "COVID-19-CT-Seg_20cases", root / _ZENODO_MASK_DIRS[mask_kind]
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"Zenodo layout: folder {d} is missing; expected COVID-19-CT-Seg_20cases/ and "
                                        f"{_ZENODO_MASK_DIRS[mask_kind]}/ under {root}")
        for img in sorted(img_dir.glob("*.nii*")):
            mask = next(iter(sorted(mask_dir.glob(_nii_stem(img) + ".nii*"))), None)
            if mask is None:
                raise FileNotFoundError(f"no mask for {img.name} in {mask_dir}")
            cases.append(SegCase(_nii_stem(img), img, mask, "COVID-19-CT-Seg (Zenodo layout)", lungs))
    elif layout == "kaggle":
        col = _KAGGLE_COLUMNS[mask_kind]
        with open(root / "metadata.csv", newline="") as f:
            for row in csv.DictReader(f):
                img = root.joinpath(*Path(row["ct_scan"]).parts[-2:])
                mask = root.joinpath(*Path(row[col]).parts[-2:])
                for p in (img, mask):
                    if not p.is_file():
                        raise FileNotFoundError(f"metadata.csv names {p}, which does not exist under {root}")
                cases.append(SegCase(_nii_stem(mask), img, mask, "COVID-19-CT-Seg (Kaggle layout)", lungs))
    else:
        raise ValueError(f"layout {layout!r}; expected auto, zenodo or kaggle")
    if not cases:
        raise FileNotFoundError(f"no COVID-19-CT-Seg cases under {root}")
    return cases


def covid19_20_cases(root: Path) -> list[SegCase]:
    """COVID-19-20: ``*_ct.nii.gz`` + ``*_seg.nii.gz`` anywhere under ``root``."""
    cases = []
    for img in sorted(Path(root).rglob("*_ct.nii*")):
        seg = img.with_name(img.name.replace("_ct.nii", "_seg.nii"))
        if not seg.is_file():
            raise FileNotFoundError(f"{img} has no {seg.name} beside it")
        cases.append(SegCase(img.name.split("_ct.nii")[0], img, seg, "COVID-19-20", False))
    if not cases:
        raise FileNotFoundError(f"no *_ct.nii.gz files under {root}")
    return cases


def phantom_seg_cases(kinds: list[str], seeds: list[int], cache_dir: Path, spacing: float | None = None,
                      log=None) -> list[SegCase]:
    return [SegCase(pf.case_id, pf.image, pf.truth, "phantom", True, group=f"phantom-seed-{pf.seed}")
            for pf in phantom_set(kinds, seeds, cache_dir, spacing=spacing, log=log)]


def read_image_hu(case: SegCase, radiopaedia_hu: bool = True) -> sitk.Image:
    """The CT in HU, loaded by the core's ``load_ct`` as ``covidct analyze`` loads it (the same checks and
    refusals). Radiopaedia cases stored as 0..255 are mapped back to HU by ``load_ct`` from the window their
    dataset documents (``RADIOPAEDIA_WINDOW``); any other 8-bit file is refused as inference would refuse it."""
    radiopaedia = radiopaedia_hu and case.case_id.lower().startswith("radiopaedia")
    volume = load_ct(case.image, eight_bit_window=RADIOPAEDIA_WINDOW if radiopaedia else None)
    case.notes.extend(f"{case.case_id}: {note}" for note in volume.notes if "8-bit export" in note)
    return volume.image


def check_sides(label: sitk.Image, case_id: str = "") -> str | None:
    """None if label 1 lies to the patient's left of label 2 (LPS +x), else a warning text."""
    cx = sides_reversed(label)
    if cx is None:
        return None
    return (f"{case_id}: label 1 ('left lung') has its centroid at LPS x={cx[0]:.0f} mm, right of label 2 at "
            f"x={cx[1]:.0f} mm; in patient coordinates these labels look swapped")


def read_label(case: SegCase, n_labels: int, sides: str = "warn") -> sitk.Image:
    """The label image in model channels; ``sides``: warn | fix (swap 1/2) | off."""
    lab = sitk.Cast(read_image_file(Path(case.label), "label"), sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(lab)
    known = arr[arr != IGNORE_LABEL] if case.source == "weak" else arr
    if known.size and known.max() >= n_labels:
        raise ValueError(f"{case.label} has label {int(known.max())}; a {n_labels}-label model expects 0..{n_labels - 1}"
                         + (f" (and {IGNORE_LABEL}: ignore)" if case.source == "weak" else ""))
    if case.lungs_labelled and sides != "off":
        problem = check_sides(lab, case.case_id)
        if problem:
            if sides == "fix":
                swap_left_right(arr)
                case.notes.append(problem + "; swapped (--sides fix)")
                out = sitk.GetImageFromArray(arr)
                out.CopyInformation(lab)
                return out
            warnings.warn(problem + "; pass --sides fix to swap them", stacklevel=2)
            case.notes.append(problem)
    return lab
