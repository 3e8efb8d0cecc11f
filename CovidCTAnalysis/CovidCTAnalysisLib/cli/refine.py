"""``covidct refine RESULT_DIR --add POINTS --remove POINTS``: correct the lesion of an analysis with clicks."""

from __future__ import annotations

import argparse

from CovidCTAnalysisLib import INTENDED_USE
from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE, Click, parse_point, read_markups


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``refine`` subcommand to ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "refine", help="correct the lesion of an analysis with add/remove clicks (interactive model)",
        description="Redraw the lesion around clicks with the installed interactive (DeepGrow-style) model: add "
                    "clicks on missed lesion, remove clicks on false lesion. Only the lesion changes, only near the "
                    "clicks and within the lungs; the labelmap, .seg.nrrd, statistics, report.json (edited: true, "
                    f"the clicks, the model) and the DICOM SEG are updated. {INTENDED_USE}")
    p.add_argument("result_dir", metavar="RESULT_DIR", help="the --output-dir of a finished covidct analyze")
    p.add_argument("--add", metavar="POINTS", action="append", default=[],
                   help="Slicer markups file (.mrk.json, LPS or RAS) of add-lesion clicks; repeatable")
    p.add_argument("--remove", metavar="POINTS", action="append", default=[],
                   help="Slicer markups file of remove-lesion clicks; repeatable")
    p.add_argument("--add-point", metavar="X,Y,Z", action="append", default=[], help="an add click in LPS mm")
    p.add_argument("--remove-point", metavar="X,Y,Z", action="append", default=[], help="a remove click in LPS mm")
    p.add_argument("--output-dir", "-o", metavar="NEW",
                   help="write the corrected result into this new folder (default: update RESULT_DIR in place)")
    p.add_argument("--model", metavar="ID[@VER]", help="installed interactive model (default rule as analyze)")
    p.add_argument("--models-dir", metavar="DIR", help="model registry folder (default: $COVIDCT_MODELS_DIR)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--dicom-seg", choices=("auto", "off"), default="auto",
                   help="auto: rewrite the DICOM SEG (SEMIAUTOMATIC, 'corrected') when the input is DICOM")
    return p


def gather_clicks(args: argparse.Namespace) -> list[Click]:
    """Clicks in the order given: markups files first (add, then remove), then the points."""
    clicks: list[Click] = []
    for kind, files in ((ADD, args.add), (REMOVE, args.remove)):
        for path in files:
            clicks += read_markups(path, kind)
    for kind, points in ((ADD, args.add_point), (REMOVE, args.remove_point)):
        clicks += [parse_point(text, kind, i) for i, text in enumerate(points, 1)]
    return clicks


def run(args: argparse.Namespace) -> int:
    from CovidCTAnalysisLib.interactive.correct import correct_result

    result = correct_result(args.result_dir, gather_clicks(args), args.output_dir, model=args.model,
                            models_dir=args.models_dir, device=args.device, dicom_seg=args.dicom_seg)
    rep = result.report
    lesion = next((s for s in rep["segments"] if s["label"] == 3), None)
    print(f"Refined with {len(rep['interactive']['clicks'])} click(s) in all; {result.changed_voxels} voxel(s) "
          f"changed; lesion now {lesion['volume_ml'] if lesion else 0:.1f} mL")
    print(f"Model: {result.model_line}")
    if rep.get("dicom_seg") and not rep["dicom_seg"].get("written"):
        print(f"DICOM SEG not written: {rep['dicom_seg'].get('reason')}")
    print(INTENDED_USE)
    print(f"Outputs in {result.output_dir}: " + ", ".join(sorted(rep["files"].values())))
    return 0
