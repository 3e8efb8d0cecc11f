"""``report.json`` content and the human summary printed by the CLI.

The report never holds patient identifiers: the input is described by its path,
format, size and spacing only (no DICOM names, IDs, dates or UIDs).
"""

from __future__ import annotations

from typing import Any

from CovidCTAnalysisLib import INTENDED_USE, __version__
from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.loading.volume import CTVolume
from CovidCTAnalysisLib.models.metadata import demo_tag

REPORT_SCHEMA_VERSION = "1.2"  # 1.1: "warnings" added; 1.2: "segmentation.postprocessing"


def demo_tags(models: list[dict[str, Any]]) -> list[str]:
    """The DEMO tags of the models that made a result (``models/metadata.demo_tag``), each once, in order."""
    return list(dict.fromkeys(t for t in (demo_tag(m) for m in models) if t))


def demo_warning(models: list[dict[str, Any]]) -> str | None:
    """``report.json``'s ``warning`` when a DEMO model made the result, else None."""
    tags = demo_tags(models)
    return f"{'; '.join(tags)}: results are for demonstration only." if tags else None


def describe_input(volume: CTVolume) -> dict[str, Any]:
    """Path, format, size, spacing, origin and direction; no patient identifiers."""
    img = volume.image
    return {
        "path": str(volume.path),
        "format": volume.source_format,
        "size": list(img.GetSize()),
        "spacing": [round(float(s), 6) for s in img.GetSpacing()],
        "origin": [round(float(s), 4) for s in img.GetOrigin()],
        "direction": [round(float(s), 6) for s in img.GetDirection()],
        "pixel_type": img.GetPixelIDTypeAsString(),
        "notes": list(volume.notes),
    }


def probabilities_dict(probabilities: Any) -> dict[str, float]:
    """Accept {class: p} or a sequence in ``CLASS_NAMES`` order; return {class: float p}."""
    if isinstance(probabilities, dict):
        return {str(k): float(v) for k, v in probabilities.items()}
    return {name: float(p) for name, p in zip(CLASS_NAMES, list(probabilities), strict=True)}


def classification_section(result: Any | None, method: str) -> dict[str, Any]:
    """``classification``: label + probabilities, or ``ran: false`` with the reason (threshold method)."""
    if result is None:
        return {"ran": False, "label": None, "probabilities": None,
                "note": f"not run: --method {method} segments by HU thresholds and does not classify"}
    section = {"ran": True, "label": result.label, "probabilities": probabilities_dict(result.probabilities),
               "n_slices": int(result.n_slices)}
    model = getattr(result, "model", None)
    if model is not None:
        section["model"] = getattr(model, "id", str(model))
    return section


def build_report(*, volume: CTVolume, method: str, device: str, classification: dict, segmentation_ran: bool,
                 segmentation_reason: str, segments: list[dict] | None, lesion_percent: dict | None,
                 reference: dict | None, models: list[dict], lung_crosscheck: dict | None,
                 dicom_seg: dict | None, timings_s: dict[str, float], files: dict[str, str],
                 warnings: list[str] | None = None, segmentation_notes: list[str] | None = None) -> dict[str, Any]:
    """Assemble the report dict (the JSON written to ``report.json``). ``warnings``: what a reader of the
    result must see (little lung in the scan, model lungs disagreeing with the threshold lungs);
    ``segmentation_notes``: what post-processing changed in the model's labels (``segmentation.postprocessing``)."""
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "software": {"name": "CovidCTAnalysis", "version": __version__},
        "intended_use": INTENDED_USE,
        "input": describe_input(volume),
        "method": method,
        "device": device,
        "classification": classification,
        "segmentation": {"ran": segmentation_ran, "reason": segmentation_reason,
                         "postprocessing": list(segmentation_notes or [])},
        "segments": segments or [],
        "statistics": {"lesion_percent": lesion_percent or {"left": None, "right": None, "total": None}},
        "models": models,
        "lung_crosscheck": lung_crosscheck,
        "timings_s": {k: round(float(v), 3) for k, v in timings_s.items()},
        "files": files,
        "warnings": list(warnings or []),
    }
    warning = demo_warning(models)
    if warning:
        report["warning"] = warning
    if reference is not None:
        report["reference"] = {k: v for k, v in reference.items() if k not in ("dice", "hd95_mm")}
        report["dice"] = reference["dice"]
        report["hd95_mm"] = reference["hd95_mm"]
    if dicom_seg is not None:
        report["dicom_seg"] = dicom_seg
    return report


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} %"


def title_lines(report: dict[str, Any]) -> list[str]:
    """Lines for the preview title: class + probabilities, research use, DEMO tag."""
    c = report["classification"]
    if c.get("ran"):
        probs = ", ".join(f"{k} {v:.2f}" for k, v in c["probabilities"].items())
        first = f"Classification: {c['label']} ({probs})"
    else:
        first = f"Classification not run (method {report['method']}); segmentation by HU thresholds"
    lp = report["statistics"]["lesion_percent"]
    lines = [first, f"Lesion: left {_fmt_pct(lp.get('left'))}, right {_fmt_pct(lp.get('right'))}, "
                    f"total {_fmt_pct(lp.get('total'))}",
             "Research use, not for diagnosis."]
    lines += demo_tags(report["models"])
    return lines


def summary_text(report: dict[str, Any], model_lines: list[str], output_dir: str) -> str:
    """Short human summary for the terminal."""
    c = report["classification"]
    out = []
    if c.get("ran"):
        probs = ", ".join(f"{k} {100 * v:.1f} %" for k, v in c["probabilities"].items())
        out.append(f"Class: {c['label']}  ({probs})")
    else:
        out.append(f"Class: not determined ({c.get('note')})")
    seg = report["segmentation"]
    if seg["ran"]:
        for s in report["segments"]:
            hu = "" if s["mean_hu"] is None else f", mean {s['mean_hu']:.0f} HU"
            comp = f", {s['n_components']} component(s)" if s["label"] == 3 else ""
            out.append(f"  {s['name']:<11} {s['volume_ml']:9.1f} mL{hu}{comp}")
        lp = report["statistics"]["lesion_percent"]
        out.append(f"Lesion percent: left {_fmt_pct(lp['left'])}, right {_fmt_pct(lp['right'])}, "
                   f"total {_fmt_pct(lp['total'])}")
        if "dice" in report:
            d = ", ".join(f"{k} {('n/a' if v is None else f'{v:.3f}')}" for k, v in report["dice"].items())
            out.append(f"Dice vs reference: {d}")
    else:
        out.append(f"Segmentation: not run ({seg['reason']})")
    for warning in report.get("warnings") or []:  # little lung in the scan, a lung cross-check flag
        out.append(f"WARNING {warning}")
    for line in model_lines:
        out.append(f"Model: {line}")
    ds = report.get("dicom_seg")
    if ds is not None and not ds.get("written"):
        out.append(f"DICOM SEG not written: {ds.get('reason')}")
    out.append(INTENDED_USE)
    out.append(f"Outputs in {output_dir}: " + ", ".join(sorted(report["files"].values())))
    return "\n".join(out)
