"""``covidct batch`` pieces in one process: scan ids, parts, batch.json refusals, per-scan status, summary,
report escaping, the model cache. Worker processes, Dask and signals: ``test_cohort_isolation.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from CovidCTAnalysisLib.cohort import discover
from CovidCTAnalysisLib.cohort.batch import finish, run_batch
from CovidCTAnalysisLib.cohort.engines import EngineOptions
from CovidCTAnalysisLib.cohort.report_html import build_html
from CovidCTAnalysisLib.cohort.runner import read_status
from CovidCTAnalysisLib.cohort.settings import AnalysisSettings
from CovidCTAnalysisLib.errors import InputError, OutputError

STANDIN = "cohort_standins:fake_analyze"


@pytest.fixture(autouse=True)
def _standins_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def dicom_file(path: Path) -> Path:
    return touch(path, b"\0" * 128 + b"DICM" + b"\0" * 16)


def test_scan_ids_are_readable_stable_and_unique(tmp_path):
    root = tmp_path / "cohort"
    touch(root / "p1" / "ct.nii.gz")
    touch(root / "p1" / "ct.nrrd")  # same readable id as ct.nii.gz: both get a hash
    touch(root / "p 2" / "scan.mha")
    dicom_file(root / "p3" / "series" / "IM0001")
    dicom_file(root / "p3" / "series" / "IM0002")
    touch(root / "notes.txt")  # neither an image nor DICOM: not a scan
    touch(root / ".hidden" / "x.nii")
    scans = discover.find_scans([root])
    ids = [s.scan_id for s in scans]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert "p_2__scan" in ids and "p3__series" in ids
    hashed = sorted(i for i in ids if i.startswith("p1__ct-"))
    assert len(hashed) == 2 and all(len(i) == len("p1__ct-") + 8 for i in hashed)
    assert discover.find_scans([root]) == scans  # the same ids on every run
    assert {Path(s.path).name for s in scans} == {"ct.nii.gz", "ct.nrrd", "scan.mha", "series"}


def test_parts_cover_the_cohort_once(tmp_path):
    scans = [discover.Scan(f"s{i:02d}", f"/x/{i}") for i in range(11)]
    parts = [discover.select_part(scans, 3, i) for i in range(3)]
    assert sorted(s.scan_id for p in parts for s in p) == [s.scan_id for s in scans]
    with pytest.raises(InputError, match="--part-id 3"):
        discover.select_part(scans, 3, 3)


def test_manifest_is_checked(tmp_path):
    touch(tmp_path / "a.nii.gz")
    good = tmp_path / "m.csv"
    good.write_text("scan_id,path\nA1,a.nii.gz\n")
    assert discover.read_manifest(good) == [discover.Scan("A1", str(tmp_path / "a.nii.gz"))]
    (tmp_path / "dup.csv").write_text("scan_id,path\nA1,a.nii.gz\nA1,a.nii.gz\n")
    with pytest.raises(InputError, match="appears twice"):
        discover.read_manifest(tmp_path / "dup.csv")
    (tmp_path / "unsafe.csv").write_text("scan_id,path\n../evil,a.nii.gz\n")
    with pytest.raises(InputError, match="not usable as a folder name"):
        discover.read_manifest(tmp_path / "unsafe.csv")


def cohort(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        touch(tmp_path / "in" / f"{name}.nii.gz")
    return tmp_path / "in"


def run(tmp_path: Path, **kw) -> object:
    settings = kw.pop("settings", AnalysisSettings(method="threshold", analyzer=STANDIN))
    return run_batch([str(tmp_path / "in")], tmp_path / "out", settings, EngineOptions(workers=1), **kw)


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_in_process_batch_isolates_a_bug_resumes_and_retries_only_when_asked(tmp_path, monkeypatch):
    cohort(tmp_path, ["a", "b", "bad_one", "c"])
    log = tmp_path / "calls.log"
    monkeypatch.setenv("COVIDCT_TEST_ANALYZER_LOG", str(log))
    first = run(tmp_path)
    assert (first.ok, first.failed, first.exit_code) == (3, 1, 1)
    out = tmp_path / "out"
    status = read_status(out, "bad_one")
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"].startswith("ZeroDivisionError: division by zero (cohort_standins.py:")
    assert sorted(p.name for p in (out / "scans" / "a").iterdir()) == ["preview.png", "report.json", "status.json"]
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".")]  # no temp folders left
    assert len(log.read_text().splitlines()) == 4

    again = run(tmp_path)  # resume: nothing to do, the failure stays failed
    assert (again.ran, again.skipped, again.failed) == (0, 4, 1)
    assert len(log.read_text().splitlines()) == 4
    retry = run(tmp_path, retry_failed=True)
    assert retry.ran == 1 and log.read_text().splitlines()[-1].startswith("bad_one.nii.gz")
    rows = summary(out)
    assert [r["scan_id"] for r in rows] == ["a", "b", "bad_one", "c"]  # one row per scan, no duplicates


def test_summary_and_report_agree_with_the_per_scan_reports(tmp_path):
    cohort(tmp_path, ["a", "b", "c", "bad_x"])
    run(tmp_path)
    out = tmp_path / "out"
    rows = {r["scan_id"]: r for r in summary(out)}
    html = (out / "report.html").read_text()
    for sid in ("a", "b", "c"):
        rep = json.loads((out / "scans" / sid / "report.json").read_text())
        lp = rep["statistics"]["lesion_percent"]
        assert rows[sid]["class"] == rep["classification"]["label"]
        assert float(rows[sid]["lesion_pct_left"]) == pytest.approx(lp["left"])
        assert float(rows[sid]["lesion_pct_total"]) == pytest.approx(lp["total"])
        assert float(rows[sid]["p_COVID-19"]) == pytest.approx(rep["classification"]["probabilities"]["COVID-19"])
        assert f'href="scans/{sid}/preview.png"' in html
    assert rows["bad_x"]["status"] == "failed" and "ZeroDivisionError" in rows["bad_x"]["error"]
    labels = [json.loads((out / "scans" / s / "report.json").read_text())["classification"]["label"] for s in "abc"]
    for cls in set(labels):
        assert f"{cls}: {labels.count(cls)}</title>" in html  # the class-count bar carries the count
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(out / "summary.parquet").to_pylist()
    assert [r["scan_id"] for r in table] == sorted(rows)
    assert table[0]["lesion_pct_total"] == pytest.approx(float(rows["a"]["lesion_pct_total"]))
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    (out / "summary.csv").unlink()
    finish(out)  # --report-only rebuilds both from the per-scan files
    assert summary(out) == list(rows.values())
    assert len((out / "report.html").read_text()) == len(before)


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    cohort(tmp_path, ["a"])
    run(tmp_path)
    with pytest.raises(OutputError, match=r"segment: 'auto' in batch.json, 'never' now.*--overwrite"):
        run(tmp_path, settings=AnalysisSettings(method="threshold", segment="never", analyzer=STANDIN))
    redo = run(tmp_path, settings=AnalysisSettings(method="threshold", segment="never", analyzer=STANDIN),
               overwrite=True)
    assert redo.ran == 1
    assert json.loads((tmp_path / "out" / "batch.json").read_text())["settings"]["segment"] == "never"
    touch(tmp_path / "other" / "file.txt")
    with pytest.raises(OutputError, match="not a covidct batch folder"):
        run_batch([str(tmp_path / "in")], tmp_path / "other", AnalysisSettings(method="threshold"),
                  EngineOptions(workers=1))


def test_report_escapes_values_from_files(tmp_path):
    evil = '<script>alert("x")</script>'
    rows = [{"scan_id": "a<b>", "status": "failed", "error": f"bad DICOM {evil}", "error_type": "InputError",
             "input": f"/data/{evil}", "warnings": evil, "preview": None},
            {"scan_id": "ok1", "status": "ok", "class": "COVID-19", "lesion_pct_left": 1.0, "lesion_pct_right": 2.0,
             "lesion_pct_total": 1.5, "warnings": f"note {evil}", "preview": 'scans/x"onmouseover="y/preview.png'}]
    batch = {"settings": {"method": "model"}, "software": {"version": "0.1.0"},
             "models": [{"id": evil, "version": "1", "task": "classification", "sha256": "ab" * 32, "demo": True,
                         "trained_on": evil}]}
    html = build_html(rows, batch)
    assert "<script>alert" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert 'href="scans/x&quot;onmouseover=&quot;y/preview.png"' in html
    assert "a&lt;b&gt;" in html and "DEMO" in html
    assert html.count("<script>") == 1  # only the page's own sorting script


def test_model_cache_loads_once_and_reloads_replaced_weights(tmp_path):
    from CovidCTAnalysisLib.models.cache import ModelCache
    from CovidCTAnalysisLib.models.registry import ModelRegistry
    from test_model_registry import make_folder

    registry = ModelRegistry(tmp_path / "models")
    meta = registry.install(make_folder(tmp_path / "m1", seed=0))
    cache = ModelCache()
    first = cache.load(registry, meta, "cpu")
    assert cache.load(registry, meta, "cpu") is first and cache.loads == 1
    registry.install(make_folder(tmp_path / "m2", seed=1, version=meta.version), force=True)
    meta2 = registry.resolve("segmentation", f"{meta.id}@{meta.version}")
    assert meta2.sha256 != meta.sha256
    second = cache.load(registry, meta2, "cpu")
    assert second is not first and cache.loads == 2
