"""``correct_result``: apply clicks to a finished analysis folder (what ``covidct refine`` runs).

Order of work, so that every refusal comes before any change: the folder is an analysis output
(``report.json`` with the input's path, ``labelmap.nii.gz``) → the output folder may be written →
the interactive model is installed → the input scan is still there and is the grid of the labelmap →
every click is inside the image and every add click within the lungs → refine → statistics →
all outputs written into a temp folder and moved in together (``results.outputs.atomic_output_dir``;
in place by default, replacing our files one by one).

``report.json`` then says ``edited: true`` and, under ``interactive``, the model's provenance and
every click so far (earlier sessions' clicks guide later ones in the same ROI).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.interactive.clicks import Click
from CovidCTAnalysisLib.progress import Progress
from CovidCTAnalysisLib.results import outputs

NOT_A_RESULT = ("{path} is not an analysis output of covidct analyze ({why}); pass the --output-dir of a "
                "finished analysis")


@dataclass(frozen=True)
class CorrectionResult:
    report: dict[str, Any]
    output_dir: Path
    changed_voxels: int
    model_line: str


def read_result_dir(result_dir: str | Path) -> tuple[Path, dict[str, Any], Path]:
    """(folder, its report, the labelmap path); refuses a folder that is not an analysis output."""
    folder = Path(result_dir).expanduser().resolve()
    report_path, labelmap_path = folder / outputs.REPORT_JSON, folder / outputs.LABELMAP_NII
    if not folder.is_dir():
        raise InputError(NOT_A_RESULT.format(path=folder, why="not a folder"))
    if not report_path.is_file():
        raise InputError(NOT_A_RESULT.format(path=folder, why=f"no {outputs.REPORT_JSON}"))
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(NOT_A_RESULT.format(path=folder, why=f"{outputs.REPORT_JSON} is not valid JSON: {e}")) from e
    if not isinstance(report, dict) or not isinstance(report.get("input"), dict) or "path" not in report["input"]:
        raise InputError(NOT_A_RESULT.format(path=folder, why=f"{outputs.REPORT_JSON} names no input scan"))
    if not labelmap_path.is_file():
        raise InputError(NOT_A_RESULT.format(path=folder, why=f"no {outputs.LABELMAP_NII}: the analysis made no "
                                                              "segmentation (run it with --segment always)"))
    return folder, report, labelmap_path


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def correct_result(result_dir: str | Path, clicks: list[Click], output_dir: str | Path | None = None, *,
                   model: str | None = None, models_dir: str | Path | None = None, device: str = "auto",
                   dicom_seg: str = "auto", progress: Progress | None = None) -> CorrectionResult:
    """Apply ``clicks`` to the analysis in ``result_dir``; write into ``output_dir`` (default: in place)."""
    from CovidCTAnalysisLib.interactive.refine import Refiner
    from CovidCTAnalysisLib.loading.load import load_ct
    from CovidCTAnalysisLib.models.device import select_device
    from CovidCTAnalysisLib.models.registry import ModelRegistry
    from CovidCTAnalysisLib.results import report as report_mod
    from CovidCTAnalysisLib.results import statistics
    from CovidCTAnalysisLib.results.preview import write_preview

    progress = progress or Progress()
    t0 = time.perf_counter()
    folder, rep, labelmap_path = read_result_dir(result_dir)
    in_place = output_dir is None or Path(output_dir).expanduser().resolve() == folder
    out = folder if in_place else outputs.check_output_dir(output_dir, force=False)
    if not clicks:
        raise InputError("no clicks given; pass --add/--remove POINTS (.mrk.json) or --add-point/--remove-point X,Y,Z")
    registry = ModelRegistry(root=models_dir)
    meta = registry.resolve("interactive", model)
    input_path = Path(rep["input"]["path"])
    if not input_path.exists():
        raise InputError(f"the input scan of {folder}, {input_path}, is gone; refining needs the scan the analysis "
                         "read. Restore it at that path (or analyse the scan again)")
    progress.step("load", 0.05, f"Loading {input_path.name}")
    volume = load_ct(input_path)
    labelmap = sitk.ReadImage(str(labelmap_path), sitk.sitkUInt8)
    if not _same_grid(volume.image, labelmap):
        raise InputError(f"{labelmap_path} does not lie on the grid of {input_path} (size {labelmap.GetSize()} vs "
                         f"{volume.image.GetSize()}); the scan at that path changed since the analysis")
    labelmap.CopyInformation(volume.image)
    earlier = [Click.from_report(c) for c in (rep.get("interactive") or {}).get("clicks", [])]
    dev = select_device(device)
    refiner_model = registry.load(meta, device=dev)
    refiner = Refiner(volume.image, labelmap, refiner_model, dev, earlier)
    refiner.check(clicks)  # every refusal before the first change
    progress.step("refine", 0.3, f"Refining with {len(clicks)} click(s)")
    steps = [refiner.click(c) for c in clicks]
    new = refiner.labelmap()
    progress.step("statistics", 0.8, "Measuring volumes and lesion percent")
    rep = dict(rep)
    rep["segments"] = statistics.segment_statistics(volume.image, new)
    rep["statistics"] = {**(rep.get("statistics") or {}), "lesion_percent": statistics.lesion_percent(new)}
    ref = rep.get("reference")
    if ref and Path(ref.get("path", "")).is_file():
        ref_img = statistics.load_reference(ref["path"], volume.image, ref.get("labels"))
        cmp = statistics.compare_to_reference(new, ref_img)
        rep["dice"], rep["hd95_mm"] = cmp["dice"], cmp["hd95_mm"]
    elif ref:
        rep.pop("dice", None), rep.pop("hd95_mm", None)
        rep["reference"] = {**ref, "note": "reference file gone; Dice/HD95 not recomputed after the correction"}
    provenance = meta.provenance()
    rep["models"] = [m for m in rep.get("models", []) if m.get("task") != "interactive"] + [provenance]
    rep["edited"] = True
    rep["interactive"] = {
        "model": provenance,
        "clicks": [c.as_report() for c in earlier] + [s.as_report() for s in steps],
        "changed_voxels": int(sum(s.changed_voxels for s in steps)),
        "rule": ("only the lesion label changed, only inside each click's ROI and within the lungs; merge rule "
                 f"{refiner.rule}"),
    }
    warning = report_mod.demo_warning(rep["models"])
    if warning:
        rep["warning"] = warning
    files = dict(rep.get("files") or {})
    with outputs.atomic_output_dir(out, force=in_place) as tmp:
        outputs.write_seg_nrrd(new, tmp / outputs.SEG_NRRD)
        outputs.write_labelmap(new, tmp / outputs.LABELMAP_NII)
        files.update(segmentation=outputs.SEG_NRRD, labelmap=outputs.LABELMAP_NII, report=outputs.REPORT_JSON,
                     preview=outputs.PREVIEW_PNG)
        files.pop("dicom_seg", None)
        if volume.dicom is not None and dicom_seg != "off":
            rep["dicom_seg"] = _write_seg(new, volume, tmp / outputs.DICOM_SEG, rep["models"])
            if rep["dicom_seg"]["written"]:
                files["dicom_seg"] = outputs.DICOM_SEG
        rep["files"] = files
        write_preview(volume.image, new, tmp / outputs.PREVIEW_PNG,
                      [*report_mod.title_lines(rep), f"Lesion corrected with {len(rep['interactive']['clicks'])} "
                                                     f"click(s): {meta.id} v{meta.version}"])
        rep["timings_s"] = {**(rep.get("timings_s") or {}), "refine": round(time.perf_counter() - t0, 3)}
        outputs.write_json(rep, tmp / outputs.REPORT_JSON)
    return CorrectionResult(rep, out, rep["interactive"]["changed_voxels"], meta.label_line())


def _write_seg(labelmap: sitk.Image, volume, path: Path, models: list[dict]) -> dict:
    from CovidCTAnalysisLib.results.dicom_seg import CORRECTED_SERIES_DESCRIPTION, write_dicom_seg

    result = write_dicom_seg(labelmap, volume.dicom, path, models, series_description=CORRECTED_SERIES_DESCRIPTION,
                             corrected=True)
    return {"written": bool(result.written), "reason": result.reason,
            "path": Path(result.path).name if result.written and result.path else None, "corrected": True}
