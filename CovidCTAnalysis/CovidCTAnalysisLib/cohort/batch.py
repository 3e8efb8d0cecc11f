"""``run_batch``: a cohort from its inputs to ``OUT/summary.*`` and ``OUT/report.html``.

Order: scans found (or read from the manifest) and split (``--num-parts``) → models resolved once and
pinned → ``batch.json`` checked against an earlier run (refused if it differs, unless ``overwrite``) →
the scans still to do run on the engine → summary and report rebuilt from the per-scan files. Resume is
the default: a scan whose ``status.json`` says ok is skipped, and a failed one is retried only with
``retry_failed``. SIGTERM stops the run like Ctrl-C (``results.interrupts``): finished scans keep their folders, the summary and
report are written for them, and a rerun does the rest.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from CovidCTAnalysisLib.cohort import discover
from CovidCTAnalysisLib.cohort import settings as cohort_settings
from CovidCTAnalysisLib.cohort.engines import EngineOptions, dask_available, local_threads, run_scans
from CovidCTAnalysisLib.cohort.report_html import write_report
from CovidCTAnalysisLib.cohort.runner import SCANS, read_status
from CovidCTAnalysisLib.cohort.summary import write_summary
from CovidCTAnalysisLib.cohort.tracker import CohortTracker
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.results.interrupts import stop_handlers

EXIT_SOME_FAILED = 1


@dataclass
class BatchOutcome:
    ok: int = 0
    failed: int = 0
    ran: int = 0
    skipped: int = 0
    failed_ids: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


def gather_scans(inputs: list[str], manifest: str | None, num_parts: int = 1, part_id: int = 0
                 ) -> list[discover.Scan]:
    if manifest and inputs:
        raise InputError("give input folders or --manifest CSV, not both")
    if not manifest and not inputs:
        raise InputError("no input: give one or more folders of scans, or --manifest CSV (columns scan_id,path)")
    scans = discover.read_manifest(manifest) if manifest else discover.find_scans(inputs)
    return discover.select_part(scans, num_parts, part_id)


def _to_run(scans: list[discover.Scan], out: Path, retry_failed: bool, overwrite: bool) -> list[discover.Scan]:
    todo = []
    for scan in scans:
        status = None if overwrite else read_status(out, scan.scan_id)
        if status is None or (status.get("status") != "ok" and retry_failed):
            todo.append(scan)
    return todo


def _clear_leftovers(out: Path, scans: list[discover.Scan]) -> None:
    """Temp folders that an interrupted run left for these scans (only these: other parts may be running)."""
    root = out / SCANS
    if not root.is_dir():
        return
    ids = {s.scan_id for s in scans}
    pattern = re.compile(r"^\.(?P<id>.+)\.(tmp|failed|old)-[0-9A-Za-z_]+$")
    for entry in root.iterdir():
        m = pattern.match(entry.name)
        if m and m.group("id") in ids:
            shutil.rmtree(entry, ignore_errors=True)


def _describe_engine(opts: EngineOptions) -> str:
    if opts.scheduler or opts.scheduler_file:
        return f"the Dask cluster at {opts.scheduler or opts.scheduler_file}"
    if opts.workers > 1 and dask_available():
        return (f"a Dask LocalCluster of {opts.workers} worker processes, {opts.threads or local_threads(opts.workers)}"
                f" thread(s) each, memory limit {opts.memory_limit or 'auto'}")
    return "this process (in-process engine)"


def run_batch(inputs: list[str], out: str | Path, analysis: cohort_settings.AnalysisSettings, opts: EngineOptions, *,
              manifest: str | None = None, retry_failed: bool = False, overwrite: bool = False,
              num_parts: int = 1, part_id: int = 0, tracker: CohortTracker | None = None) -> BatchOutcome:
    """Analyse the cohort into ``out`` (see the module docstring); returns the counts of this run's scans."""
    tracker = tracker or CohortTracker("none")
    out = Path(out).expanduser().resolve()
    scans = gather_scans(inputs, manifest, num_parts, part_id)
    for scan in scans:
        if Path(scan.path) == out or out in Path(scan.path).parents:
            raise InputError(f"the output folder {out} holds the input {scan.path}; choose a separate folder")
    models = cohort_settings.models_or_error(analysis)
    analysis = cohort_settings.pin_models(analysis, models)
    external = bool(opts.scheduler or opts.scheduler_file)
    if external and not dask_available():
        raise InputError("--scheduler/--scheduler-file need Dask; install it with pip install "
                         "'covidct-analysis[dask]' (or run without them: the scans then run in this process)")
    if opts.workers > 1 and not external and not dask_available():
        tracker.log(f"--workers {opts.workers}: Dask is not installed, so the scans run one by one in this process "
                    "(pip install 'covidct-analysis[dask]')", "warning")
    if opts.timeout_s and not (opts.distributed and dask_available()):
        tracker.log("--timeout is enforced by Dask worker processes only; in-process it is not", "warning")
    out.mkdir(parents=True, exist_ok=True)
    cohort_settings.check_or_write(out, cohort_settings.batch_document(analysis, models), overwrite)
    todo = _to_run(scans, out, retry_failed, overwrite)
    _clear_leftovers(out, todo)
    outcome = BatchOutcome(ran=len(todo), skipped=len(scans) - len(todo))
    tracker.start(len(scans), len(todo), _describe_engine(opts))
    try:
        with stop_handlers():  # SIGTERM/SIGHUP unwind like Ctrl-C: workers closed, summary of what finished
            for status in run_scans(todo, out, analysis, opts):
                tracker.scan(status)
    finally:
        tracker.close()
        finish(out, tracker)
    for scan in scans:
        status = read_status(out, scan.scan_id) or {}
        if status.get("status") == "ok":
            outcome.ok += 1
        else:
            outcome.failed += 1
            outcome.failed_ids.append(scan.scan_id)
    return outcome


def finish(out: Path, tracker: CohortTracker | None = None) -> tuple[list[Path], Path]:
    """Rebuild ``summary.csv``/``.parquet`` and ``report.html`` from the per-scan files (``--report-only``)."""
    rows, paths, note = write_summary(out)
    if note and tracker is not None:
        tracker.log(note, "warning")
    report = write_report(out, rows)
    return paths, report
