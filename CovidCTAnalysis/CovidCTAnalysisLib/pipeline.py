"""``analyze``: the one entry point for a full analysis (CLI, Slicer subprocess, benchmarks).

Order of work, so that every refusal happens before heavy work and leaves nothing:
options → output folder → reference label map → models resolved → CT loaded and
checked → DICOM SEG referenceability (``--dicom-seg required``) → reference read →
then lungs, classification, segmentation, statistics, and finally all outputs
written into a temp folder and moved in together.

Threshold lungs are computed once and reused for the classifier's lung extent,
the segmenter's lung box and the lung cross-check.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import SimpleITK as sitk

from CovidCTAnalysisLib.constants import COVID_CLASS, LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.errors import DicomSegError, InputError
from CovidCTAnalysisLib.progress import Progress

if TYPE_CHECKING:
    from CovidCTAnalysisLib.models.cache import ModelCache

METHODS = ("model", "threshold")
# Heavy imports the model path needs (several seconds on 2 cores); imported in a background
# thread while the CT is loaded and the threshold lungs are found, which release the GIL.
PREFETCH_MODULES = ("torchvision.models", "monai.networks.nets", "monai.inferers")
SEGMENT_CHOICES = ("auto", "always", "never")
DICOM_SEG_CHOICES = ("auto", "required", "off")


@dataclass(frozen=True)
class AnalysisResult:
    """What ``analyze`` returns: the report (also in report.json), the labelmap and the written files."""

    report: dict[str, Any]
    labelmap: sitk.Image | None
    paths: dict[str, Path]
    output_dir: Path
    model_lines: tuple[str, ...] = field(default_factory=tuple)


class _Stages:
    """Wall-clock time per stage, recorded in ``timings_s``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

    def total(self) -> dict[str, float]:
        return {**self.times, "total": time.perf_counter() - self.t0}


class _SubProgress(Progress):
    """Maps a stage's own 0..1 fractions into its slice [lo, hi] of the overall bar."""

    def __init__(self, parent: Progress, lo: float, hi: float) -> None:
        self.parent, self.lo, self.hi = parent, lo, hi

    def step(self, step: str, fraction: float, message: str = "") -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        self.parent.step(step, self.lo + f * (self.hi - self.lo), message)

    def log(self, message: str, level: str = "info") -> None:
        self.parent.log(message, level)


def _prefetch_imports() -> None:
    def work() -> None:
        for name in PREFETCH_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import later reports any problem properly
                return

    threading.Thread(target=work, name="covidct-prefetch-imports", daemon=True).start()


def _load_model(registry, meta, device, cache: ModelCache | None):
    """The model from ``cache`` when one is given (loaded once per process), else freshly from the registry."""
    return cache.load(registry, meta, device) if cache is not None else registry.load(meta, device=device)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"--{name} {value!r} is not one of {choices}")


def _warn_coverage(labelmap, segments: list[dict], lesion_pct: dict, progress: Progress, warnings: list[str]) -> None:
    """Warn (log and ``warnings``) when the lungs touch an image edge or one lung is far smaller than the other."""
    from CovidCTAnalysisLib.loading.coverage import fov_cut_warning, lung_balance_warning
    from CovidCTAnalysisLib.loading.volume import voxel_volume_ml

    ml, vox_ml = {s["label"]: s["volume_ml"] for s in segments}, voxel_volume_ml(labelmap)
    left = ml[LEFT_LUNG] + lesion_pct["lesion_voxels_left"] * vox_ml  # a lung's lesions are still that lung
    right = ml[RIGHT_LUNG] + lesion_pct["lesion_voxels_right"] * vox_ml
    for warning in (fov_cut_warning(labelmap), lung_balance_warning(left, right)):
        if warning:
            progress.log(warning, "warning")
            warnings.append(warning)


def _note_low_lung(volume, left_ml: float, right_ml: float, progress: Progress, warnings: list[str]):
    """``volume`` with a note when it shows little lung (also logged, and added to ``warnings``)."""
    from CovidCTAnalysisLib.loading.checks import lung_coverage_note

    note = lung_coverage_note(left_ml, right_ml)
    if note is None:
        return volume
    progress.log(note, "warning")
    warnings.append(note)
    return replace(volume, notes=(*volume.notes, note))


def _analyze(input_path: str | Path, output_dir: str | Path, *, method: str = "model", segment: str = "auto",
             device: str = "auto", classifier: str | None = None, segmenter: str | None = None,
             models_dir: str | Path | None = None, reference: str | Path | None = None,
             reference_labels: str | None = None, series_uid: str | None = None, dicom_seg: str = "auto",
             force: bool = False, progress: Progress | None = None, model_cache: ModelCache | None = None
             ) -> AnalysisResult:
    """Analyse one CT and write ``segmentation.seg.nrrd``, ``labelmap.nii.gz``, ``report.json``,
    ``preview.png`` (and a DICOM SEG for DICOM input) into ``output_dir``.

    ``method="model"`` classifies with the installed ResNet-50 and segments (if
    ``segment`` is "always", or "auto" and the class is COVID-19) with the 3D U-Net;
    ``method="threshold"`` skips classification and segments by HU thresholds.
    ``model_cache`` (optional) keeps loaded models for the next call in this process (``covidct batch``);
    without it every call loads and checks its models afresh.
    Raises a ``CovidCTError`` subclass (nothing written) when anything is wrong.
    """
    from CovidCTAnalysisLib.loading.load import load_ct
    from CovidCTAnalysisLib.models.device import describe_device, select_device
    from CovidCTAnalysisLib.results import outputs, report, statistics
    from CovidCTAnalysisLib.results.preview import write_preview

    progress = progress or Progress()
    stage = _Stages()
    _check_choice("method", method, METHODS)
    _check_choice("segment", segment, SEGMENT_CHOICES)
    _check_choice("dicom-seg", dicom_seg, DICOM_SEG_CHOICES)
    input_path = Path(input_path).expanduser()

    # --- cheap refusals first: nothing heavy has run, nothing is written -------------------
    progress.step("check", 0.0, "Checking options and output folder")
    out_dir = outputs.check_output_dir(output_dir, force, inputs=(input_path,))
    label_map = statistics.parse_reference_labels(reference_labels) if reference_labels else None
    if reference_labels and reference is None:
        raise InputError("--reference-labels was given without --reference FILE")
    if dicom_seg == "required" and segment == "never":
        raise DicomSegError("--dicom-seg required needs a segmentation, but --segment never was given")
    dev = select_device(device)

    registry = cls_meta = seg_meta = None
    if method == "model":
        from CovidCTAnalysisLib.models.registry import ModelRegistry

        registry = ModelRegistry(root=models_dir)
        cls_meta = registry.resolve("classification", classifier)
        if segment != "never":
            seg_meta = registry.resolve("segmentation", segmenter)
        _prefetch_imports()

    progress.step("load", 0.02, f"Loading {input_path.name}")
    with stage("load"):
        volume = load_ct(input_path, series_uid=series_uid)
    for note in volume.notes:
        progress.log(note)
    if dicom_seg == "required":
        if volume.dicom is None:
            raise DicomSegError(f"--dicom-seg required, but the input {input_path} is {volume.source_format}, not a "
                                "DICOM series; a DICOM SEG must reference DICOM images")
        from CovidCTAnalysisLib.results.dicom_seg import seg_reference_problem

        problem = seg_reference_problem(volume.dicom)
        if problem:
            raise DicomSegError(f"--dicom-seg required, but a DICOM SEG cannot reference {input_path}: {problem}")
    ref_img = None
    if reference is not None:
        with stage("reference_load"):
            ref_img = statistics.load_reference(reference, volume.image, label_map)

    # --- heavy work ------------------------------------------------------------------------
    classification = None
    labelmap = None
    crosscheck: dict | None = None
    warnings: list[str] = []  # for report.json "warnings": what a reader of the result must see
    model_metas = []
    seg_reason = ""
    seg_notes: list[str] = []  # what the model path's post-processing changed (segmentation.postprocessing)
    if method == "model":
        from CovidCTAnalysisLib.inference.classify import classify
        from CovidCTAnalysisLib.threshold.lungs import compare_lungs, lung_extent, segment_lungs

        progress.step("lungs", 0.08, "Locating the lungs (HU threshold)")
        with stage("lungs_threshold"):
            lungs = segment_lungs(volume.image)
            extent = lung_extent(lungs)
        volume = _note_low_lung(volume, extent.left_ml, extent.right_ml, progress, warnings)
        with stage("classifier_load"):
            cls_model = _load_model(registry, cls_meta, dev, model_cache)
        model_metas.append(cls_meta)
        progress.step("classify", 0.15, "Classifying lung slices")
        with stage("classify"):
            classification = classify(volume, extent, cls_model, dev, _SubProgress(progress, 0.15, 0.4))
        del cls_model
        progress.log(f"Classification: {classification.label}")
        crosscheck = {"ran": False, "message": "not run: the model made no segmentation"}
        run_seg = segment == "always" or (segment == "auto" and classification.label == COVID_CLASS)
        seg_reason = (f"--segment {segment}" if segment != "auto"
                      else f"--segment auto and the class is {classification.label}")
        if run_seg:
            from CovidCTAnalysisLib.inference.segment import segment as run_segmenter
            from CovidCTAnalysisLib.threshold.rib_cage import lesion_bounds

            with stage("segmenter_load"):
                seg_model = _load_model(registry, seg_meta, dev, model_cache)
            model_metas.append(seg_meta)
            progress.step("segment", 0.42, "Segmenting lungs and lesions (3D U-Net)")
            with stage("rib_cage"):  # the segmenter's lesion is kept in the cage, above the diaphragm
                bounds = lesion_bounds(volume.image, lungs)
            with stage("segment"):
                labelmap = run_segmenter(volume, extent, seg_model, dev, _SubProgress(progress, 0.42, 0.8),
                                         rib_cage=bounds.rib_cage, notes=seg_notes,
                                         below_diaphragm=bounds.below_diaphragm)
            del bounds
            del seg_model
            with stage("lung_crosscheck"):
                crosscheck = {"ran": True, **compare_lungs(labelmap, lungs)}
            if crosscheck.get("flag"):
                progress.log(f"lung cross-check: {crosscheck.get('message')}", "warning")
                warnings.append(f"lung cross-check: {crosscheck.get('message')}")
        from CovidCTAnalysisLib.results.plausibility import check_model_result

        with stage("plausibility"):  # flags a result not to trust (class vs lesion, disagreement, unlike training)
            guard = check_model_result(
                volume.image, lungs, label=classification.label, labelmap=labelmap,
                probability=classification.probabilities.get(classification.label),
                model_profiles={m.id: m.raw.get("input_profile") for m in model_metas})
        for note in guard["warnings"]:
            progress.log(note, "warning")
            warnings.append(note)
    else:
        if segment != "never":
            from CovidCTAnalysisLib.threshold.lesions import threshold_labelmap

            progress.step("segment", 0.1, "Segmenting lungs and lesions (HU thresholds)")
            with stage("segment"):
                labelmap = threshold_labelmap(volume.image)
            seg_reason = f"--method threshold, --segment {segment}"
        else:
            seg_reason = "--segment never"
        crosscheck = {"ran": False, "message": "not applicable: the segmentation itself is the threshold method"}
    if dicom_seg == "required" and labelmap is None:
        raise DicomSegError(f"--dicom-seg required, but no segmentation was made ({seg_reason})")

    segments = lesion_pct = ref_metrics = None
    if labelmap is not None:
        progress.step("statistics", 0.82, "Measuring volumes and lesion percent")
        with stage("statistics"):
            segments = statistics.segment_statistics(volume.image, labelmap)
            lesion_pct = statistics.lesion_percent(labelmap)
        _warn_coverage(labelmap, segments, lesion_pct, progress, warnings)
        if method != "model":  # the model path checked its threshold lungs before classifying
            ml = {s["label"]: s["volume_ml"] for s in segments}
            volume = _note_low_lung(volume, ml[LEFT_LUNG], ml[RIGHT_LUNG], progress, warnings)
        if ref_img is not None:
            with stage("reference_compare"):
                ref_metrics = {"path": str(Path(reference)), "labels": label_map,
                               **statistics.compare_to_reference(labelmap, ref_img)}
    elif ref_img is not None:
        progress.log("--reference given but no segmentation was made; Dice/HD95 not computed", "warning")

    # --- outputs: all into a temp folder, moved in at the end ------------------------------
    progress.step("write", 0.9, f"Writing outputs to {out_dir}")
    models = [m.provenance() for m in model_metas]
    with stage("write"), outputs.atomic_output_dir(out_dir, force) as tmp:
        files: dict[str, str] = {}
        shown = labelmap
        if labelmap is not None:
            outputs.write_seg_nrrd(labelmap, tmp / outputs.SEG_NRRD)
            outputs.write_labelmap(labelmap, tmp / outputs.LABELMAP_NII)
            files.update(segmentation=outputs.SEG_NRRD, labelmap=outputs.LABELMAP_NII)
        else:
            shown = sitk.Image(volume.image.GetSize(), sitk.sitkUInt8)
            shown.CopyInformation(volume.image)
        dseg = None
        if volume.dicom is not None and dicom_seg != "off":
            dseg = _write_dicom_seg(labelmap, volume, tmp / outputs.DICOM_SEG, model_metas, seg_reason)
            if dseg["written"]:
                files["dicom_seg"] = outputs.DICOM_SEG
            elif dicom_seg == "required":
                raise DicomSegError(f"--dicom-seg required, but the DICOM SEG was not written: {dseg['reason']}")
        files.update(report=outputs.REPORT_JSON, preview=outputs.PREVIEW_PNG)
        rep = report.build_report(
            volume=volume, method=method, device=describe_device(dev) if method == "model" else "cpu",
            classification=report.classification_section(classification, method), segmentation_ran=labelmap is not None,
            segmentation_reason=seg_reason, segmentation_notes=seg_notes, segments=segments, lesion_percent=lesion_pct,
            reference=ref_metrics,
            models=models, lung_crosscheck=crosscheck, dicom_seg=dseg, timings_s={}, files=files, warnings=warnings)
        write_preview(volume.image, shown, tmp / outputs.PREVIEW_PNG, report.title_lines(rep))
        rep["timings_s"] = {k: round(v, 3) for k, v in stage.total().items()}
        outputs.write_json(rep, tmp / outputs.REPORT_JSON)
    rep["timings_s"] = {k: round(v, 3) for k, v in stage.total().items()}
    paths = {k: out_dir / v for k, v in files.items()}
    return AnalysisResult(report=rep, labelmap=labelmap, paths=paths, output_dir=out_dir,
                          model_lines=tuple(m.label_line() for m in model_metas))


def _write_dicom_seg(labelmap, volume, path: Path, model_metas: list, seg_reason: str) -> dict:
    """Try the DICOM SEG; return the report's ``dicom_seg`` section {written, reason, path}."""
    if labelmap is None:
        return {"written": False, "reason": f"no segmentation was made ({seg_reason})", "path": None}
    from CovidCTAnalysisLib.results.dicom_seg import write_dicom_seg

    result = write_dicom_seg(labelmap, volume.dicom, path, model_metas)
    return {"written": bool(result.written), "reason": result.reason,
            "path": Path(result.path).name if result.written and result.path else None}


class _PausingProgress(_SubProgress):
    """Test-only (``interrupts.pause_point``): waits at each announced stage when the tests ask for it."""

    def step(self, step: str, fraction: float, message: str = "") -> None:
        from CovidCTAnalysisLib.results.interrupts import pause_point

        self.parent.step(step, fraction, message)
        pause_point(step)


@functools.wraps(_analyze)
def analyze(input_path: str | Path, output_dir: str | Path, **options: Any) -> AnalysisResult:
    # One run per output folder (results.run_lock), taken before any heavy work so a second run is refused up
    # front; the kernel drops it if this process dies, and stale temp folders of dead runs are removed then.
    from CovidCTAnalysisLib.results.interrupts import PAUSE_ENV
    from CovidCTAnalysisLib.results.outputs import check_output_dir
    from CovidCTAnalysisLib.results.run_lock import output_lock

    out_dir = check_output_dir(output_dir, bool(options.get("force")), inputs=(Path(input_path).expanduser(),))
    if os.environ.get(PAUSE_ENV):
        options["progress"] = _PausingProgress(options.get("progress") or Progress(), 0.0, 1.0)
    with output_lock(out_dir):
        return _analyze(input_path, out_dir, **options)
