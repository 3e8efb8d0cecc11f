"""``covidct analyze INPUT -o OUT``: classify a chest CT, segment lungs and lesions, write the statistics."""

from __future__ import annotations

import argparse

from CovidCTAnalysisLib import INTENDED_USE
from CovidCTAnalysisLib.errors import CovidCTError
from CovidCTAnalysisLib.progress import JsonLinesProgress, make_progress
from CovidCTAnalysisLib.results.interrupts import interrupted_exit_code, interrupted_message, stop_handlers

PROGRESS_CHOICES = ("auto", "bar", "plain", "json", "none")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers``; return its parser."""
    from CovidCTAnalysisLib.pipeline import DICOM_SEG_CHOICES, METHODS, SEGMENT_CHOICES
    from CovidCTAnalysisLib.results.statistics import REFERENCE_LABELS_HELP

    p = subparsers.add_parser(
        "analyze", help="classify a chest CT and segment lungs and lesions",
        description="Classify a chest CT (Normal / Pneumonia / COVID-19), segment left lung, right lung and "
                    f"lesions, and write statistics. {INTENDED_USE}")
    p.add_argument("input", help="CT image (.nii/.nii.gz/.nrrd/.mha) or a DICOM series folder")
    p.add_argument("--output-dir", "-o", required=True, help="folder for the outputs (new or empty, or use --force)")
    p.add_argument("--segment", choices=SEGMENT_CHOICES, default="auto",
                   help="auto: segment only if the class is COVID-19 (default)")
    p.add_argument("--method", choices=METHODS, default="model",
                   help="model: ResNet-50 + 3D U-Net (default); threshold: HU thresholds, no classification")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (auto: CUDA when present)")
    p.add_argument("--reference", metavar="FILE", help="reference segmentation for Dice and HD95")
    p.add_argument("--reference-labels", metavar="MAP", help=REFERENCE_LABELS_HELP)
    p.add_argument("--classifier", metavar="ID[@VER]", help="installed classifier (default: the only one, else the newest non-demo, else the newest demo)")
    p.add_argument("--segmenter", metavar="ID[@VER]", help="installed segmenter (same default rule as --classifier)")
    p.add_argument("--models-dir", metavar="DIR", help="model registry folder (default: $COVIDCT_MODELS_DIR)")
    p.add_argument("--series-uid", metavar="UID", help="series to analyse in a DICOM folder holding several")
    p.add_argument("--dicom-seg", choices=DICOM_SEG_CHOICES, default="auto",
                   help="DICOM SEG for DICOM input: auto (when possible), required (fail otherwise), off")
    p.add_argument("--force", action="store_true", help="replace the analysis files in a non-empty --output-dir")
    p.add_argument("--progress", choices=PROGRESS_CHOICES, default="auto",
                   help="auto: a bar on a terminal; json: one JSON line per step (for the Slicer module)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the analysis; print the summary (or JSON lines with ``--progress json``); return 0."""
    from CovidCTAnalysisLib.pipeline import analyze
    from CovidCTAnalysisLib.results.report import summary_text

    progress = make_progress(args.progress)
    try:
        with stop_handlers():  # SIGTERM/SIGHUP unwind like Ctrl-C: temp folder removed, lock released
            result = analyze(args.input, args.output_dir, method=args.method, segment=args.segment,
                             device=args.device, classifier=args.classifier, segmenter=args.segmenter,
                             models_dir=args.models_dir, reference=args.reference,
                             reference_labels=args.reference_labels, series_uid=args.series_uid,
                             dicom_seg=args.dicom_seg, force=args.force, progress=progress)
    except CovidCTError as e:
        if isinstance(progress, JsonLinesProgress):
            progress.error(str(e), e.exit_code)
        raise
    except KeyboardInterrupt as e:
        if isinstance(progress, JsonLinesProgress):
            progress.error(interrupted_message(e), interrupted_exit_code(e))
        raise
    finally:
        progress.close()
    summary = summary_text(result.report, list(result.model_lines), str(result.output_dir))
    if isinstance(progress, JsonLinesProgress):
        # stdout carries only JSON lines in this mode; the summary travels as log events
        for line in summary.splitlines():
            progress.log(line)
        progress.done(str(result.paths["report"]))
    else:
        print(summary)
    return 0
