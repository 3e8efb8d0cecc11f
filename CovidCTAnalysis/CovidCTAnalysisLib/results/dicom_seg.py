"""DICOM SEG export (highdicom, BINARY) of our labelmap, referencing the source CT series.

Segments follow ``constants.TERMINOLOGY``: left lung (SCT 44029006), right lung
(SCT 3341006), lesion (Morphologically Altered Structure / Lesion, anatomic
region Lung). They are marked AUTOMATIC with an algorithm identification that
names the model(s) and version(s). Frame *i* of the labelmap (its z index) is
matched to the source instance at the same position; the geometry is checked
against the source headers before anything is written.

A SEG that cannot reference its source (blank or non-DICOM UIDs, no Frame of
Reference, typical of badly anonymised public data) is not written:
``write_dicom_seg`` returns ``written=False`` and the reason, naming the UIDs.

Example::

    result = write_dicom_seg(labelmap, volume.dicom, out / "segmentation.dcm", models=[seg_model])
    if not result.written:
        print("no DICOM SEG:", result.reason)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from CovidCTAnalysisLib import __version__
from CovidCTAnalysisLib.constants import LABEL_NAMES, LESION, TERMINOLOGY
from CovidCTAnalysisLib.errors import DicomSegError
from CovidCTAnalysisLib.files import atomic_path
from CovidCTAnalysisLib.loading.dicom_scan import format_uid, uid_problem
from CovidCTAnalysisLib.loading.volume import CTVolume, DicomSource
from CovidCTAnalysisLib.models.metadata import demo_tag

log = logging.getLogger(__name__)

DEFAULT_SERIES_DESCRIPTION = "CovidCTAnalysis lungs and lesions (research)"
CORRECTED_SERIES_DESCRIPTION = "CovidCTAnalysis lungs and lesions, corrected (research)"
DEFAULT_SERIES_NUMBER = 1000
MANUFACTURER = "CovidCTAnalysis"
NEEDS_DICOM_SOURCE = ("DICOM SEG needs a DICOM source series (the input was {fmt}); load a DICOM folder "
                      "to export a DICOM SEG")
# Segment positions must match the source slices to within this fraction of the spacing.
POSITION_TOLERANCE = 0.01


@dataclass(frozen=True)
class SegWriteResult:
    """Outcome of ``write_dicom_seg``; ``reason`` says why nothing was written."""

    written: bool
    reason: str | None
    path: Path | None
    n_frames: int
    empty_segments: tuple[str, ...]

    def as_report(self) -> dict[str, Any]:
        """The ``report.json`` ``dicom_seg`` entry."""
        return {"written": self.written, "reason": self.reason, "path": str(self.path) if self.path else None,
                "n_frames": self.n_frames, "empty_segments": list(self.empty_segments)}


def seg_unavailable_reason(volume: CTVolume) -> str | None:
    """Why no DICOM SEG can be made for ``volume`` (non-DICOM input or unreferenceable), else None."""
    if volume.source_format != "dicom" or volume.dicom is None:
        return NEEDS_DICOM_SOURCE.format(fmt=volume.source_format)
    return seg_reference_problem(volume.dicom)


def seg_reference_problem(source: DicomSource) -> str | None:
    """None if a SEG can reference ``source``; else the reason, naming the bad UIDs.

    Checks the UIDs a SEG must carry or reference: Study, Series and Frame of
    Reference UIDs, the SOP Class UID and every SOP Instance UID (present, valid,
    unique). Damaged UIDs are shown shortened (they may carry patient IDs).
    """
    problems: list[str] = []
    sop = list(source.sop_instance_uids)
    if not sop:
        problems.append("the series has no instances")
    bad = [(u, uid_problem(u)) for u in sop]
    blank = sum(1 for _, p in bad if p in ("blank", "missing"))
    invalid = [(u, p) for u, p in bad if p not in (None, "blank", "missing")]
    if blank:
        problems.append(f"SOPInstanceUID is blank on {blank} of {len(sop)} instances")
    if invalid:
        u, p = invalid[0]
        problems.append(f"SOPInstanceUID {format_uid(u)} is {p} (and {len(invalid) - 1} more)"
                        if len(invalid) > 1 else f"SOPInstanceUID {format_uid(u)} is {p}")
    valid = [u for u, p in bad if p is None]
    if len(set(valid)) != len(valid):
        problems.append(f"SOPInstanceUID repeats: {len(valid) - len(set(valid))} duplicate(s) among {len(sop)}")
    for name, value in (("StudyInstanceUID", source.study_instance_uid),
                        ("SeriesInstanceUID", source.series_instance_uid),
                        ("FrameOfReferenceUID", source.frame_of_reference_uid),
                        ("SOPClassUID", source.sop_class_uid)):
        p = uid_problem(value)
        if p in ("blank", "missing"):
            problems.append(f"{name} is {p}")
        elif p:
            problems.append(f"{name} {format_uid(value)} is {p}")
    return "; ".join(problems) if problems else None


def write_dicom_seg(
    labelmap: sitk.Image,
    source: DicomSource,
    output_path: Path,
    models: Sequence[Any],
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    series_number: int = DEFAULT_SERIES_NUMBER,
    corrected: bool = False,
) -> SegWriteResult:
    """Write ``labelmap`` (uint8 1 = left lung, 2 = right lung, 3 = lesion) as a BINARY DICOM SEG.

    ``labelmap`` must be on the source grid (the ``CTVolume`` loaded from
    ``source``). ``models`` are ``ModelMetadata`` objects or provenance dicts
    with ``id`` and ``version`` (empty for the threshold method). Returns
    ``written=False`` with the reason, without raising, when the source cannot be
    referenced or the labelmap is empty. Empty segments are left out, with a
    warning, and listed in ``empty_segments``. Raises ``DicomSegError`` if the
    labelmap does not lie on the source grid or the file cannot be written. The
    file appears atomically (temp file + rename); new UIDs on every call.
    ``corrected``: the lesion was corrected by clicks (``covidct refine``), so the lesion segment is
    SEMIAUTOMATIC (the lungs stay AUTOMATIC) and the content description says so.
    """
    output_path = Path(output_path)
    problem = seg_reference_problem(source)
    if problem:
        reason = f"the source series cannot be referenced by a DICOM SEG: {problem}"
        log.warning("DICOM SEG not written: %s", reason)
        return SegWriteResult(False, reason, None, 0, ())
    datasets = [_read_source(f) for f in source.instance_files]
    labels = sitk.GetArrayFromImage(_on_source_grid(labelmap, datasets))  # (z, y, x) == (frames, rows, columns)
    if labels.size and (labels.min() < 0 or labels.max() > max(LABEL_NAMES)):
        unknown = sorted(set(np.unique(labels).tolist()) - {0, *LABEL_NAMES})
        raise DicomSegError(f"labelmap holds values {unknown[:10]}; expected 0 and our labels {LABEL_NAMES}")
    labels = labels.astype(np.uint8, copy=False)
    present = [v for v in LABEL_NAMES if np.any(labels == v)]
    empty = tuple(LABEL_NAMES[v] for v in LABEL_NAMES if v not in present)
    if not present:
        reason = "the labelmap is empty (no left lung, right lung or lesion voxels); nothing to export"
        log.warning("DICOM SEG not written: %s", reason)
        return SegWriteResult(False, reason, None, 0, empty)
    if empty:
        # DICOM SEG segment numbers must run 1..n; an empty segment has no frames that
        # readers can show, so it is left out rather than written as a hollow entry.
        log.warning("DICOM SEG: empty segment(s) left out: %s", ", ".join(empty))
    algorithm = _algorithm_identification(models)
    descriptions = [_segment_description(number, value, algorithm, corrected and value == LESION)
                    for number, value in enumerate(present, 1)]
    # A label-map style array (segment number per pixel) rather than a stack of masks: our
    # segments never overlap, and highdicom then skips a costly overlap check.
    lut = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(present, 1):
        lut[value] = number
    pixels = lut[labels]
    try:
        seg = _build_segmentation(
            source_images=datasets,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=__version__,
            device_serial_number=f"{MANUFACTURER}-{__version__}",
            content_label="LUNGS_LESIONS",
            content_description=_content_description(models, corrected),
            content_creator_name="CovidCTAnalysis^",
            series_description=series_description[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # highdicom checks the source attributes more strictly than we do; a source it refuses
        # must not cost the user the rest of the analysis (pipeline: written=false, exit 0).
        reason = f"highdicom could not build a SEG from this source ({type(exc).__name__}: {str(exc)[:200]})"
        log.warning("DICOM SEG not written: %s", reason)
        return SegWriteResult(False, reason, None, 0, empty)
    _fill_type2(seg)
    n_frames = int(seg.NumberOfFrames)
    _save_atomically(seg, output_path)
    log.info("DICOM SEG written: %s (%d frames; segments: %s)", output_path.name, n_frames,
             ", ".join(LABEL_NAMES[v] for v in present))
    return SegWriteResult(True, None, output_path, n_frames, empty)


def _build_segmentation(**kwargs: Any) -> hd.seg.Segmentation:
    """highdicom's constructor (a seam for tests)."""
    return hd.seg.Segmentation(**kwargs)


def _segment_description(number: int, value: int, algorithm: hd.AlgorithmIdentificationSequence,
                         semiautomatic: bool = False) -> hd.seg.SegmentDescription:
    term = TERMINOLOGY[value]
    region = [_code(term.anatomic_region)] if term.anatomic_region else None
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=LABEL_NAMES[value],
        segmented_property_category=_code(term.category),
        segmented_property_type=_code(term.type),
        algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if semiautomatic
                        else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC),
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=LABEL_NAMES[value],
        anatomic_regions=region,
        display_color=hd.color.CIELabColor.from_rgb(*term.color_rgb),
    )


def _code(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _algorithm_identification(models: Sequence[Any]) -> hd.AlgorithmIdentificationSequence:
    """Name and version of what made the labelmap: the segmentation model(s), or the threshold method."""
    # Only segmentation models made the labelmap; a classifier alone means the threshold method did.
    seg_models = [i for i in (_model_info(m) for m in models) if i.get("task") in (None, "segmentation", "interactive")]
    if not seg_models:
        return hd.AlgorithmIdentificationSequence(
            name="CovidCTAnalysis threshold method", version=__version__,
            family=codes.cid7162.HistogramAnalysis)
    demo = _demo_tag(seg_models)
    tag = f" [{demo}]" if demo else ""
    name = " + ".join(str(i["id"]) for i in seg_models)[: 64 - len(tag)] + tag  # LO: 64 characters; keep the tag
    version = " + ".join(str(i["version"]) for i in seg_models)
    return hd.AlgorithmIdentificationSequence(name=name, version=version[:64],
                                              family=codes.cid7162.ArtificialIntelligence)


def _content_description(models: Sequence[Any], corrected: bool = False) -> str:
    """ContentDescription (LO, 64 characters): a demo model is labelled as such in the file itself."""
    demo = _demo_tag([_model_info(m) for m in models])
    if demo:
        return f"DEMO model ({demo.split(': ', 1)[1]}); research use, not for diagnosis"
    if corrected:
        return "Lungs and lesions, lesion corrected by clicks; research use"
    return "Lungs and lesions, automatic; research use, not for diagnosis"


def _demo_tag(infos: list[dict[str, Any]]) -> str | None:
    """The short DEMO tag of these models' result (64-character fields): "DEMO: synthetic lesions" when one of them
    also learned from real lesion-free CTs, "DEMO: synthetic phantoms" when they learned from phantoms only."""
    tags = {demo_tag(i, short=True) for i in infos if i.get("demo")}
    return max(tags, key=lambda t: "lesions" in t) if tags else None


def _model_info(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        raw = model
    elif hasattr(model, "provenance"):
        raw = model.provenance()
    else:
        raise TypeError(f"models: expected ModelMetadata or provenance dicts, got {type(model).__name__}")
    if "id" not in raw or "version" not in raw:
        raise ValueError(f"model provenance needs 'id' and 'version'; got keys {sorted(raw)}")
    return raw


def _source_grid(datasets: list[pydicom.Dataset]) -> sitk.Image:
    """An empty uint8 image on the source series' grid (instance k at z index k)."""
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    n = len(datasets)
    dz = float((positions[-1] - positions[0]) @ normal) / (n - 1) if n > 1 else float(first.get("SliceThickness") or 1)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    grid = sitk.Image(int(first.Columns), int(first.Rows), n, sitk.sitkUInt8)
    grid.SetOrigin(tuple(positions[0]))
    grid.SetSpacing((col_spacing, row_spacing, dz))
    grid.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    for k in range(n):
        where = np.array(grid.TransformIndexToPhysicalPoint((0, 0, k)))
        if np.linalg.norm(where - positions[k]) > POSITION_TOLERANCE * min(row_spacing, col_spacing, abs(dz)):
            raise DicomSegError(f"source instance {k} lies off a regular grid ({positions[k].round(3).tolist()} mm "
                                f"instead of {where.round(3).tolist()}); expected the instances of a regular series "
                                "ordered along the slice normal")
    return grid


def _on_source_grid(labelmap: sitk.Image, datasets: list[pydicom.Dataset]) -> sitk.Image:
    """The labelmap indexed like the source (z index k = instance k).

    A labelmap on the same voxels in another index order (e.g. z reversed, as a
    viewer may store it) is re-indexed exactly (nearest neighbour on coinciding
    voxel centres); anything else is refused with ``DicomSegError``.
    """
    grid = _source_grid(datasets)
    tol = POSITION_TOLERANCE  # in voxels
    size = np.array(labelmap.GetSize())
    corners = [np.array(labelmap.TransformPhysicalPointToContinuousIndex(grid.TransformIndexToPhysicalPoint(
        (int(i), int(j), int(k))))) for i in (0, grid.GetWidth() - 1) for j in (0, grid.GetHeight() - 1)
        for k in (0, grid.GetDepth() - 1)]
    steps = [np.array(labelmap.TransformPhysicalPointToContinuousIndex(grid.TransformIndexToPhysicalPoint(idx)))
             for idx in ((1, 0, 0), (0, 1, 0), (0, 0, 1))] if min(grid.GetSize()) > 1 else []
    aligned = all(np.all(np.abs(c - np.rint(c)) < tol) for c in corners + steps)
    inside = all(np.all((c > -tol) & (c < size - 1 + tol)) for c in corners)
    if not (aligned and inside):
        raise DicomSegError(f"labelmap (size {labelmap.GetSize()}, origin {np.round(labelmap.GetOrigin(), 3).tolist()}, "
                            f"spacing {np.round(labelmap.GetSpacing(), 3).tolist()}) does not lie on the source series "
                            f"grid (size {grid.GetSize()}, origin {np.round(grid.GetOrigin(), 3).tolist()}, spacing "
                            f"{np.round(grid.GetSpacing(), 3).tolist()}); expected the labelmap on the source grid")
    same_order = (labelmap.GetSize() == grid.GetSize()
                  and np.allclose(corners[0], 0, atol=tol) and np.allclose(corners[-1], size - 1, atol=tol)
                  and np.allclose(labelmap.GetDirection(), grid.GetDirection(), atol=1e-4))
    if same_order:
        return labelmap
    log.info("DICOM SEG: labelmap re-indexed onto the source grid (same voxels, different index order)")
    return sitk.Resample(labelmap, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# Patient and General Study attributes of Type 2: a SEG must carry them (empty if unknown).
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
                        "ReferringPhysicianName", "StudyDate", "StudyTime")


def _read_source(path: Path) -> pydicom.Dataset:
    """A source header for highdicom (no pixels needed), with Type 2 attributes that
    over-zealous anonymisers deleted (e.g. PatientName) put back empty, in memory only."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if not str(ds.get("SOPClassUID", "") or "").strip() and "MediaStorageSOPClassUID" in ds.file_meta:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # blanked by an anonymiser, kept in the file meta
    return ds


def _fill_type2(seg: hd.seg.Segmentation) -> None:
    """Patient/study attributes a SEG must carry (Type 2) even when the anonymised source dropped them."""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in seg:
            setattr(seg, keyword, None)


def _save_atomically(seg: hd.seg.Segmentation, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
    except OSError as exc:
        raise DicomSegError(f"cannot write the DICOM SEG to {path} ({exc.strerror}); choose a writable "
                            "output folder") from exc
