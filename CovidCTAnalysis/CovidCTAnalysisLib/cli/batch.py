"""``covidct batch IN... -o OUT``: a cohort on one machine or a Dask cluster, resumable, with a cohort report.

Exit status: 0 when every scan of this run's cohort (or part) is ok, 1 when any failed (the others are
still analysed), a ``CovidCTError`` code (2-5) when the batch itself is refused before any scan runs,
143 after SIGTERM (finished scans are kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from CovidCTAnalysisLib import INTENDED_USE

PROGRESS_CHOICES = ("auto", "bar", "plain", "json", "none")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to ``subparsers``; return its parser."""
    from CovidCTAnalysisLib.cohort.settings import DEFAULT_ANALYZER
    from CovidCTAnalysisLib.pipeline import DICOM_SEG_CHOICES, METHODS, SEGMENT_CHOICES

    p = subparsers.add_parser(
        "batch", help="analyse a cohort (folders or a manifest), resumable, on one machine or a Dask cluster",
        description="Analyse every scan in the input folders (NIfTI/NRRD/MHA files and DICOM series folders, "
                    "searched recursively) or in --manifest, into OUT/scans/<scan_id>/ (what `covidct analyze` "
                    "writes, plus status.json), then OUT/summary.csv, OUT/summary.parquet and OUT/report.html. "
                    "Rerunning resumes: finished scans are skipped. " + INTENDED_USE)
    p.add_argument("inputs", nargs="*", metavar="IN", help="folders of scans (or image files)")
    p.add_argument("--manifest", metavar="CSV", help="CSV with columns scan_id,path (instead of folders)")
    p.add_argument("--output-dir", "-o", metavar="OUT", help="the cohort folder (new, or an earlier run's to resume)")
    p.add_argument("--report-only", metavar="OUT", help="only rebuild OUT's summary and report.html from its scans")
    a = p.add_argument_group("analysis (as for `covidct analyze`; recorded in OUT/batch.json)")
    a.add_argument("--method", choices=METHODS, default="model")
    a.add_argument("--segment", choices=SEGMENT_CHOICES, default="auto")
    a.add_argument("--device", default="auto", help="auto|cpu|cuda")
    a.add_argument("--classifier", metavar="ID[@VER]")
    a.add_argument("--segmenter", metavar="ID[@VER]")
    a.add_argument("--models-dir", metavar="DIR")
    a.add_argument("--dicom-seg", choices=DICOM_SEG_CHOICES, default="auto")
    a.add_argument("--analyzer", metavar="MODULE:FUNCTION", default=DEFAULT_ANALYZER,
                   help="function called like pipeline.analyze for each scan (default: %(default)s; for tests)")
    r = p.add_argument_group("resume")
    r.add_argument("--retry-failed", action="store_true", help="run the scans that failed before again")
    r.add_argument("--overwrite", action="store_true",
                   help="analyse every scan again, even with other settings or models than OUT/batch.json")
    r.add_argument("--num-parts", type=int, default=1, metavar="K", help="split the cohort into K parts (job arrays)")
    r.add_argument("--part-id", type=int, default=0, metavar="I", help="run part I (0..K-1) of --num-parts")
    e = p.add_argument_group("engine (Dask distributed when installed; in this process otherwise)")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: the number of cores); 1: in this process")
    e.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use this running Dask scheduler")
    e.add_argument("--scheduler-file", metavar="FILE", help="use the Dask scheduler described in FILE")
    e.add_argument("--memory-limit", metavar="SIZE", help="per local worker, e.g. 6GiB (default: a share of RAM)")
    e.add_argument("--timeout", type=float, metavar="SECONDS", help="fail a scan that runs longer (Dask workers)")
    e.add_argument("--max-attempts", type=int, default=2, metavar="N",
                   help="tries of a scan whose worker died (default 2)")
    e.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch/ITK threads per worker (default: cores / workers on a local cluster)")
    e.add_argument("--gpu-resource", action="store_true",
                   help="tasks ask for resources={'GPU': 1} (automatic with --device cuda); cluster workers "
                        "must be started with --resources GPU=1")
    p.add_argument("--progress", choices=PROGRESS_CHOICES, default="auto",
                   help="auto: a bar on a terminal; json: one JSON line per scan")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the cohort (or rebuild its report); return the exit status."""
    from CovidCTAnalysisLib.cohort.batch import finish, run_batch
    from CovidCTAnalysisLib.cohort.engines import EngineOptions
    from CovidCTAnalysisLib.cohort.settings import BATCH_JSON, AnalysisSettings
    from CovidCTAnalysisLib.cohort.tracker import CohortTracker
    from CovidCTAnalysisLib.errors import InputError

    tracker = CohortTracker(args.progress)
    if args.report_only:
        out = Path(args.report_only).expanduser().resolve()
        if not (out / BATCH_JSON).is_file():
            raise InputError(f"--report-only {out}: no {BATCH_JSON} there; expected the output folder of covidct batch")
        paths, report = finish(out, tracker)
        tracker.log(f"rebuilt {', '.join(str(p) for p in paths)} and {report}")
        return 0
    if not args.output_dir:
        raise InputError("--output-dir OUT is required (or --report-only OUT)")
    workers = args.workers if args.workers is not None else (len(os.sched_getaffinity(0))
                                                           if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers < 1 or args.max_attempts < 1:
        raise InputError(f"--workers {workers} --max-attempts {args.max_attempts}: both must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout}: expected a positive number of seconds")
    analysis = AnalysisSettings(method=args.method, segment=args.segment, device=args.device,
                                classifier=args.classifier, segmenter=args.segmenter, models_dir=args.models_dir,
                                dicom_seg=args.dicom_seg, analyzer=args.analyzer)
    opts = EngineOptions(workers=workers, scheduler=args.scheduler, scheduler_file=args.scheduler_file,
                         memory_limit=args.memory_limit, timeout_s=args.timeout, max_attempts=args.max_attempts,
                         threads=args.threads, gpu=args.gpu_resource or args.device.startswith("cuda"))
    outcome = run_batch(args.inputs, args.output_dir, analysis, opts, manifest=args.manifest,
                        retry_failed=args.retry_failed, overwrite=args.overwrite, num_parts=args.num_parts,
                        part_id=args.part_id, tracker=tracker)
    out = Path(args.output_dir).expanduser().resolve()
    tracker.log(f"{outcome.ok} ok, {outcome.failed} failed ({outcome.ran} run now, {outcome.skipped} done before); "
                f"summary {out / 'summary.csv'}, report {out / 'report.html'}")
    if outcome.failed:
        tracker.log("failed: " + ", ".join(outcome.failed_ids[:20]) + (" ..." if outcome.failed > 20 else "")
                    + " (reasons in summary.csv and report.html; rerun with --retry-failed to try them again)",
                    "warning")
    tracker.done(outcome.ok, outcome.failed, str(out / "summary.csv"), str(out / "report.html"))
    return outcome.exit_code
