"""``summary.csv`` and ``summary.parquet``: one row per scan of ``OUT/scans``, failures included.

Rows are read back from the per-scan files (``status.json``, and ``report.json`` for scans that
succeeded), never from the driver's memory, so a resumed or split (``--part-id``) cohort gets one
row per scan and the summary always agrees with the files beside it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib.cohort.runner import SCANS, STATUS_JSON
from CovidCTAnalysisLib.constants import CLASS_NAMES, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.files import atomic_path

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
REPORT_JSON = "report.json"
BASE_COLUMNS = ["scan_id", "status", "error", "error_type", "attempts", "retried", "duration_s", "input",
                "class", *[f"p_{c}" for c in CLASS_NAMES], *[f"{_n}_ml" for _n in ("left_lung", "right_lung", "lesion")],
                "lesion_pct_left", "lesion_pct_right", "lesion_pct_total", "method", "models", "demo",
                "warnings", "notes", "preview"]
_VOLUME_COLUMNS = {LEFT_LUNG: "left_lung_ml", RIGHT_LUNG: "right_lung_ml", LESION: "lesion_ml"}


def scan_records(out: Path) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(status, report or None)`` for every ``scans/<id>/status.json``, by scan id."""
    records = []
    root = Path(out) / SCANS
    for status_path in sorted(root.glob(f"*/{STATUS_JSON}")):
        if status_path.parent.name.startswith("."):
            continue
        try:
            status = json.loads(status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        report = None
        if status.get("status") == "ok":
            try:
                report = json.loads((status_path.parent / REPORT_JSON).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                report = None
        records.append((status, report))
    return records


def summary_row(status: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """One row: status columns, then the report's class, probabilities, volumes, lesion percent and timings."""
    row: dict[str, Any] = {c: None for c in BASE_COLUMNS}
    row.update({k: status.get(k) for k in ("scan_id", "status", "error", "error_type", "attempts", "retried",
                                           "duration_s", "input")})
    if report is None:
        if status.get("status") == "ok":
            row.update(status="failed", error="status.json says ok but report.json is missing or unreadable")
        return row
    cls = report.get("classification") or {}
    row["class"] = cls.get("label")
    for name, p in (cls.get("probabilities") or {}).items():
        row[f"p_{name}"] = p
    for seg in report.get("segments") or []:
        if seg.get("label") in _VOLUME_COLUMNS:
            row[_VOLUME_COLUMNS[seg["label"]]] = seg.get("volume_ml")
    lp = (report.get("statistics") or {}).get("lesion_percent") or {}
    row.update(lesion_pct_left=lp.get("left"), lesion_pct_right=lp.get("right"), lesion_pct_total=lp.get("total"))
    models = report.get("models") or []
    row.update(method=report.get("method"), models="; ".join(f"{m.get('id')}@{m.get('version')}" for m in models),
               demo=any(m.get("demo") for m in models), warnings="; ".join(report.get("warnings") or []),
               notes="; ".join((report.get("input") or {}).get("notes") or []),
               preview=f"{SCANS}/{status.get('scan_id')}/{(report.get('files') or {}).get('preview', 'preview.png')}")
    for stage, seconds in (report.get("timings_s") or {}).items():
        row[f"time_{stage}_s"] = seconds
    return row


def summary_rows(out: Path) -> list[dict[str, Any]]:
    rows = [summary_row(s, r) for s, r in scan_records(out)]
    extra = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    return [{k: r.get(k) for k in BASE_COLUMNS + extra} for r in rows]


def write_summary(out: Path) -> tuple[list[dict[str, Any]], list[Path], str | None]:
    """Write ``summary.csv`` (and ``summary.parquet`` when pyarrow is installed): (rows, paths, note)."""
    out = Path(out)
    rows = summary_rows(out)
    columns = list(rows[0]) if rows else list(BASE_COLUMNS)

    with atomic_path(out / SUMMARY_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths, note = [out / SUMMARY_CSV], None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        note = f"{SUMMARY_PARQUET} not written: pyarrow is not installed (pip install 'covidct-analysis[dask]')"
        return rows, paths, note
    table = pa.Table.from_pylist(rows, schema=_schema(pa, columns, rows))
    with atomic_path(out / SUMMARY_PARQUET) as tmp:
        pq.write_table(table, tmp)
    paths.append(out / SUMMARY_PARQUET)
    return rows, paths, note


def _schema(pa, columns: list[str], rows: list[dict[str, Any]]):
    """Column types that stay the same whatever the rows hold (all-empty columns are not left as null type)."""
    text = {"scan_id", "status", "error", "error_type", "input", "class", "method", "models", "warnings", "notes",
            "preview"}
    fields = []
    for c in columns:
        if c in text:
            fields.append(pa.field(c, pa.string()))
        elif c in ("retried", "demo"):
            fields.append(pa.field(c, pa.bool_()))
        elif c == "attempts":
            fields.append(pa.field(c, pa.int64()))
        else:
            fields.append(pa.field(c, pa.float64()))
    return pa.schema(fields)
