"""``OUT/report.html``: one self-contained page about the cohort (no external files, scripts or fonts).

Class counts, histograms of lesion percent per class, left versus right lesion percent, a sortable
table linking each scan's ``preview.png``, the failures with their reasons, and the models with their
DEMO status. Every value that comes from a file (ids, paths, errors, notes that may carry DICOM text)
is escaped with ``html.escape``.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib import INTENDED_USE, __version__
from CovidCTAnalysisLib.cohort import svg
from CovidCTAnalysisLib.cohort.settings import read_batch_json
from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.files import write_text
from CovidCTAnalysisLib.models.metadata import demo_tag
from CovidCTAnalysisLib.results.report import demo_warning

REPORT_HTML = "report.html"
NOT_CLASSIFIED = "not classified"
TABLE_COLUMNS = (("scan_id", "scan"), ("status", "status"), ("class", "class"), ("p_COVID-19", "p(COVID-19)"),
                 ("lesion_pct_left", "lesion % left"), ("lesion_pct_right", "lesion % right"),
                 ("lesion_pct_total", "lesion % total"), ("lesion_ml", "lesion mL"), ("attempts", "attempts"),
                 ("duration_s", "time s"), ("warnings", "warnings"))

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212529;max-width:1200px}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #dee2e6}.muted{color:#6c757d}
.demo{background:#fff3bf;border:1px solid #f08c00;padding:8px 12px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px}.charts figure{margin:0}figcaption{font-size:12px;color:#495057}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #dee2e6;padding:3px 7px;text-align:left}
th{background:#f1f3f5;cursor:pointer;user-select:none}th.sorted-asc::after{content:" ▲"}
th.sorted-desc::after{content:" ▼"}tr.failed td{background:#fff5f5}td.num{text-align:right}"""

JS = """document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var asc=!th.classList.contains('sorted-asc');t.querySelectorAll('th').forEach(function(h){h.className='';});
  th.className=asc?'sorted-asc':'sorted-desc';var body=t.tBodies[0];var rows=Array.from(body.rows);
  rows.sort(function(a,b){var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;var nx=parseFloat(x),ny=parseFloat(y);
   var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:(x||'').localeCompare(y||'');return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});});});});"""


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _cell(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    sort_value = escape("" if value is None else str(value), quote=True)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = escape(_fmt(value))
    if column == "scan_id" and row.get("preview"):
        text = f'<a href="{escape(str(row["preview"]), quote=True)}">{text}</a>'
    return f'<td data-v="{sort_value}"{" class=num" if numeric else ""}>{text}</td>'


def _class_of(row: dict[str, Any]) -> str:
    return row.get("class") or NOT_CLASSIFIED


def _models_section(batch: dict[str, Any] | None) -> tuple[str, str | None]:
    """The models table, and the DEMO warning when a DEMO model made the results (else None)."""
    models = (batch or {}).get("models") or []
    settings = (batch or {}).get("settings") or {}
    if not models:
        return (f"<p>No model: method <b>{escape(str(settings.get('method', 'unknown')))}</b> "
                "(lungs and lesions by HU thresholds, no classification).</p>"), None
    rows = "".join(
        f"<tr><td>{escape(str(m.get('task')))}</td><td>{escape(str(m.get('id')))}</td>"
        f"<td>{escape(str(m.get('version')))}</td><td><code>{escape(str(m.get('sha256')))}</code></td>"
        f"<td>{f'<b>{escape(demo_tag(m))}</b>' if m.get('demo') else 'no'}</td>"
        f"<td>{escape(str(m.get('trained_on') or ''))}</td></tr>" for m in models)
    return ("<table><thead><tr><th>task</th><th>id</th><th>version</th><th>sha256</th><th>demo</th>"
            f"<th>trained on</th></tr></thead><tbody>{rows}</tbody></table>"), demo_warning(models)


def build_html(rows: list[dict[str, Any]], batch: dict[str, Any] | None) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    order = [*CLASS_NAMES, NOT_CLASSIFIED]
    counts = {c: sum(_class_of(r) == c for r in ok) for c in order}
    counts = {c: n for c, n in counts.items() if n or c in CLASS_NAMES}
    models_html, demo = _models_section(batch)
    totals = [r["lesion_pct_total"] for r in ok if r.get("lesion_pct_total") is not None]
    x_max = max(totals + [1.0])
    hists = "".join(
        f"<figure>{svg.histogram([r['lesion_pct_total'] for r in ok if _class_of(r) == c and r.get('lesion_pct_total') is not None], f'Lesion percent, {c}', svg.colour(c), x_max)}"
        f"<figcaption>{escape(c)}: {counts.get(c, 0)} scan(s)</figcaption></figure>" for c in counts if counts[c])
    points = [(r["lesion_pct_left"], r["lesion_pct_right"], r.get("class"), str(r.get("scan_id"))) for r in ok
              if r.get("lesion_pct_left") is not None and r.get("lesion_pct_right") is not None]
    head = "".join(f"<th>{escape(label)}</th>" for _, label in TABLE_COLUMNS)
    body = "".join(f'<tr class="{"ok" if r.get("status") == "ok" else "failed"}">'
                   + "".join(_cell(c, r) for c, _ in TABLE_COLUMNS) + "</tr>" for r in rows)
    fails = "".join(f"<tr><td>{escape(str(r.get('scan_id')))}</td><td>{escape(str(r.get('error_type') or ''))}</td>"
                    f"<td>{escape(str(r.get('error') or ''))}</td><td>{escape(_fmt(r.get('attempts')))}</td>"
                    f"<td>{escape(str(r.get('input') or ''))}</td></tr>" for r in failed)
    version = escape(str(((batch or {}).get("software") or {}).get("version", __version__)))
    settings = (batch or {}).get("settings") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cohort report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>
<h1>Cohort report</h1>
<p class="muted">CovidCTAnalysis {version}, method {escape(str(settings.get('method', '')))}, written
{escape(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}. <b>{escape(INTENDED_USE)}</b></p>
{f'<p class="demo">{escape(demo)}</p>' if demo else ''}
<p><b>{len(rows)}</b> scans: <b>{len(ok)}</b> analysed, <b>{len(failed)}</b> failed.</p>
<h2>Classes</h2><div class="charts"><figure>{svg.bars(counts, 'Scans per class')}</figure></div>
<h2>Lesion percent per class</h2><div class="charts">{hists or '<p>No lesion statistics (no segmentation ran).</p>'}</div>
<h2>Left versus right lung</h2><div class="charts"><figure>{svg.scatter(points, 'Lesion percent, left vs right', 'left lung lesion %', 'right lung lesion %')}
<figcaption>One point per scan, coloured by class; dashed: left = right.</figcaption></figure></div>
<h2>Scans</h2><p class="muted">Click a column to sort; the scan id opens its preview.</p>
<table class="sortable" id="scans"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Failures ({len(failed)})</h2>
{'<table id="failures"><thead><tr><th>scan</th><th>type</th><th>reason</th><th>attempts</th><th>input</th></tr></thead><tbody>' + fails + '</tbody></table>' if failed else '<p>None.</p>'}
<h2>Models</h2>{models_html}
<script>{JS}</script></body></html>
"""


def write_report(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``out/report.html`` (replaced in one rename) and return its path."""
    return write_text(Path(out) / REPORT_HTML, build_html(rows, read_batch_json(Path(out))))
