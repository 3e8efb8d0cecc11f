"""Classifier datasets: every public layout becomes a list of :class:`ClassifierCase`.

Layouts (``--dataset``):

``folders``   Class folders of PNG/JPG slices, as in the Kaggle "COVID-19 & Normal &
              Pneumonia CT Images" set. ``--class-folders`` maps classes to folder names
              (default ``Normal=NORMAL2_CT,Pneumonia=PNEUMONIA2_CT,COVID-19=COVID2_CT``; set it
              to the names in your copy). Patients: a sub-folder per patient
              (``<class>/<patient>/*.png``) when present, else the file stem with its
              trailing slice number removed (``--patient-regex``), so slices of one
              patient never straddle the split.
``covid-ct-md`` COVID-CT-MD (Afshar et al., Sci Data 8:121, 2021): class folders
              (``COVID-19 subjects``, ``CAP subjects``, ``Normal subjects``) of DICOM series,
              ``Index.csv`` (Label Index, Diagnosis, Relative Path, Folder/ID) and
              ``Slice-level-labels.npy`` (case index x slice, 1 = infection). Upstream slice
              index 0 is the MOST SUPERIOR slice; :func:`labels_by_z` re-orders the labels to
              the image's z index using the direction matrix.
``nifti-csv`` NIfTI/NRRD/MHA volumes with a CSV: columns ``image`` (path, relative to the
              CSV), ``class`` (Normal / Pneumonia / CAP / COVID-19), optional ``patient_id`` and
              optional ``slice_labels`` (a .npy of 0/1 per z index of the image).
``phantoms``  The core's synthetic phantoms; lesion slices come from the phantom truth.

Volumes (files and DICOM folders) are read by the core's ``load_ct``, as ``covidct analyze`` reads
them: the same series choice, gap and tilt checks, NIfTI completeness checks and refusals.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.geometry import patient_axes
from CovidCTAnalysisLib.loading.load import read_image_file

from training.phantom_cache import KIND_TO_CLASS, phantom_set

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CLASS_FOLDERS = "Normal=NORMAL2_CT,Pneumonia=PNEUMONIA2_CT,COVID-19=COVID2_CT"
DEFAULT_CTMD_FOLDERS = "Normal=Normal subjects,Pneumonia=CAP subjects,COVID-19=COVID-19 subjects"
LESION_SLICE_FRACTION = 0.03  # phantoms: lesion share of a slice's lung for a "lesion slice"
TRACE_SLICE = 2  # slice label: a trace of lesion (a lesion's tip), neither a lesion slice nor a clear one
DEFAULT_PATIENT_REGEX = r"^(.*?)[ _\-.]*\(?\d+\)?$"
_ALIASES = {"normal": "Normal", "pneumonia": "Pneumonia", "cap": "Pneumonia", "community-acquired pneumonia": "Pneumonia",
            "covid-19": "COVID-19", "covid19": "COVID-19", "covid": "COVID-19", "ncp": "COVID-19", "cp": "Pneumonia"}


def class_index(name: str) -> int:
    """Index in ``CLASS_NAMES`` of a class name or a dataset's alias for it (CAP -> Pneumonia)."""
    key = str(name).strip()
    canonical = _ALIASES.get(key.lower(), key)
    if canonical not in CLASS_NAMES:
        raise ValueError(f"class {name!r} is not known; expected one of {list(CLASS_NAMES)} or an alias "
                         f"{sorted(_ALIASES)}")
    return CLASS_NAMES.index(canonical)


def parse_class_folders(text: str) -> dict[int, str]:
    """``"Normal=NORMAL2_CT,..."`` -> {class index: folder name}."""
    out: dict[int, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--class-folders entry {part!r}: expected CLASS=FOLDER")
        cls, folder = part.split("=", 1)
        out[class_index(cls)] = folder.strip()
    return out


@dataclass
class ClassifierCase:
    """One patient. Volumes carry an image file (or DICOM folder); PNG sets carry slice files."""

    patient_id: str
    class_index: int
    source: str
    image: Path | None = None  # volume file or DICOM series folder
    slice_files: list[Path] = field(default_factory=list)  # 2-D images (folders layout)
    slice_labels: np.ndarray | None = None  # per z index of the loaded image: 0 clear, 1 infection, TRACE_SLICE
    truth: Path | None = None  # phantom truth (labels 1/2/3)
    labels_superior_first: bool = False  # COVID-CT-MD order: re-ordered by labels_by_z once loaded
    group: str = ""  # the patient behind the case (phantoms of one seed are one patient); default patient_id
    part: str = ""  # with a mixed --dataset (phantoms,hybrids,weak): the part it came from

    def __post_init__(self) -> None:
        self.group = self.group or self.patient_id

    @property
    def is_volume(self) -> bool:
        return self.image is not None


def labels_by_z(upstream: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Re-order COVID-CT-MD slice labels (index 0 = most superior) to the image's z index.

    LPS +z is superior; if increasing z index moves superior, z = n-1 is the most superior
    slice and gets ``upstream[0]``.
    """
    n = image.GetSize()[2]
    upstream = np.asarray(upstream).reshape(-1)
    if upstream.size < n:
        raise ValueError(f"slice labels have {upstream.size} entries for an image of {n} slices")
    labels = upstream[:n].astype(np.uint8)  # rows of the upstream array are padded to the longest case
    axes = patient_axes(image)
    z_dir_superior = axes.lps_of_index[2] == 2 and axes.sign[2] > 0
    return labels[::-1].copy() if z_dir_superior else labels.copy()


def folders_cases(root: Path, class_folders: str = DEFAULT_CLASS_FOLDERS,
                  patient_regex: str = DEFAULT_PATIENT_REGEX) -> list[ClassifierCase]:
    """Class folders of PNG/JPG slices (see module doc)."""
    rx = re.compile(patient_regex)
    cases: dict[str, ClassifierCase] = {}
    for cls, folder in parse_class_folders(class_folders).items():
        base = Path(root) / folder
        if not base.is_dir():
            raise FileNotFoundError(f"class folder {base} for {CLASS_NAMES[cls]} does not exist; set --class-folders "
                                    f"to your copy's names (now {class_folders!r})")
        for f in sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            rel = f.relative_to(base)
            if len(rel.parts) > 1:
                pid = rel.parts[0]
            else:
                m = rx.match(f.stem)
                pid = (m.group(1) if m and m.group(1) else f.stem)
            key = f"{CLASS_NAMES[cls]}/{pid}"
            case = cases.setdefault(key, ClassifierCase(patient_id=key, class_index=cls, source=str(base)))
            case.slice_files.append(f)
    if not cases:
        raise FileNotFoundError(f"no {IMAGE_SUFFIXES} images under {root} in folders {class_folders!r}")
    return sorted(cases.values(), key=lambda c: c.patient_id)


def covid_ct_md_cases(root: Path, class_folders: str = DEFAULT_CTMD_FOLDERS,
                      labels_npy: str = "Slice-level-labels.npy", index_csv: str = "Index.csv") -> list[ClassifierCase]:
    """COVID-CT-MD: class folders of DICOM series plus Index.csv and the slice-level labels."""
    root = Path(root)
    index: dict[str, int] = {}
    if (root / index_csv).is_file():
        with open(root / index_csv, newline="") as f:
            for row in csv.DictReader(f):
                index[row["Folder/ID"].strip()] = int(row["Label Index"])
    labels = np.load(root / labels_npy) if (root / labels_npy).is_file() else None
    if index and labels is None:
        raise FileNotFoundError(f"{root / index_csv} exists but {root / labels_npy} does not; expected both")
    cases = []
    for cls, folder in parse_class_folders(class_folders).items():
        base = root / folder
        if not base.is_dir():
            raise FileNotFoundError(f"COVID-CT-MD class folder {base} does not exist; expected {class_folders!r}")
        for patient in sorted(p for p in base.iterdir() if p.is_dir()):
            case = ClassifierCase(patient_id=patient.name, class_index=cls, source=f"COVID-CT-MD {folder}",
                                  image=patient)
            if patient.name in index:
                case.slice_labels = labels[index[patient.name]]  # upstream order; re-ordered after loading
                case.labels_superior_first = True
            cases.append(case)
    if not cases:
        raise FileNotFoundError(f"no patient folders under {root} in {class_folders!r}")
    return cases


def nifti_csv_cases(csv_path: Path) -> list[ClassifierCase]:
    """NIfTI (or NRRD/MHA) volumes listed in a CSV (see module doc)."""
    csv_path = Path(csv_path)
    cases = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        for col in ("image", "class"):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{csv_path} lacks column {col!r}; expected columns image,class[,patient_id,slice_labels]")
        for row in reader:
            image = (csv_path.parent / row["image"]).resolve()
            pid = (row.get("patient_id") or "").strip() or image.name.split(".")[0]
            case = ClassifierCase(patient_id=pid, class_index=class_index(row["class"]), source=str(csv_path),
                                  image=image)
            if (row.get("slice_labels") or "").strip():
                case.slice_labels = np.load(csv_path.parent / row["slice_labels"].strip()).astype(np.uint8)
            cases.append(case)
    ids = [c.patient_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{csv_path}: patient ids repeat; one row per patient volume is expected")
    return cases


def lesion_slice_labels(truth: np.ndarray) -> np.ndarray:
    """Per z of an exact truth (z, y, x; 3 = lesion): 1 lesion slice, 0 clear, ``TRACE_SLICE`` a lesion's tip.

    Phantoms and hybrid cases (``training.classifier_mix``) both take their slice labels from here.
    """
    truth = np.asarray(truth).reshape(truth.shape[0], -1)  # (z, y*x)
    # A lesion slice is one where lesion covers at least LESION_SLICE_FRACTION of the lung, so that a
    # slice grazing a lesion's tip does not teach "disease" from a few voxels.
    # A case whose lesions are all small (under that share on every slice) would otherwise get no
    # lesion slice and train "COVID-19" on all its lung slices, most of them normal-looking: there, the
    # slices with at least half the largest share are the lesion slices.
    share = (truth == 3).sum(axis=1) / np.maximum((truth > 0).sum(axis=1), 1)
    any_lesion = (truth == 3).any(axis=1)
    lesion = (share >= min(LESION_SLICE_FRACTION, 0.5 * float(share.max()))) & any_lesion
    return np.where(lesion, 1, np.where(any_lesion, TRACE_SLICE, 0)).astype(np.uint8)


def phantom_cases(kinds: list[str], seeds: list[int], cache_dir: Path, spacing: float | None = None,
                  log=None) -> list[ClassifierCase]:
    """Phantoms as cases; slice labels per z come from the truth: 1 lesion slice, 0 clear, ``TRACE_SLICE``."""
    cases = []
    for pf in phantom_set(kinds, seeds, cache_dir, spacing=spacing, log=log):
        lesion = lesion_slice_labels(sitk.GetArrayFromImage(read_image_file(pf.truth, "phantom truth")))
        cases.append(ClassifierCase(patient_id=pf.case_id, class_index=class_index(KIND_TO_CLASS[pf.kind]),
                                    source="phantom", image=pf.image, slice_labels=lesion, truth=pf.truth,
                                    group=f"phantom-seed-{pf.seed}"))
    return cases
