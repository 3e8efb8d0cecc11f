"""DICOM text fields from an untrusted series (issue 13, part 3): control characters, very long values and
markup reach the log, report.json and error messages as one printable line of bounded length."""

from __future__ import annotations

import json

import pydicom
from CovidCTAnalysisLib.loading.dicom_scan import display_text
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

NASTY = "CT\x1b[2J\x1b[31mRED\x00 chest\r\nerror: fake line\t<b>bold</b><img src=x onerror=alert(1)>" + "x" * 500


def test_display_text_is_one_printable_bounded_line():
    text = display_text(NASTY, 64)
    assert text.isprintable() and "\n" not in text and "\x1b" not in text
    assert len(text) == 64 and text.endswith("…")
    assert "<b>bold</b>" in text  # markup kept as written (JSON escapes it; the Slicer panel shows plain text)
    assert display_text("  Thorax  1.0  B70f ", 64) == "Thorax 1.0 B70f"


def test_nasty_series_description_reaches_log_and_report_safely(tmp_path, capsys):
    from CovidCTAnalysisLib.cli.main import main

    dicom = tmp_path / "dicom"
    written = write_dicom_series(make_phantom("normal", 2, size=(64, 64, 32)).image, dicom)
    for f in written.files:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = NASTY
        ds.Modality = "CT"
        ds.save_as(f)
    mr = tmp_path / "dicom" / "other"  # a second, non-CT series: the notes describe the skipped one too
    mr_written = write_dicom_series(make_phantom("normal", 2, size=(64, 64, 8)).image, mr, modality="MR")
    for f in mr_written.files:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = NASTY
        ds.save_as(f)
    out = tmp_path / "out"
    code = main(["analyze", str(dicom), "-o", str(out), "--method", "threshold", "--progress", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]  # every stdout line is one JSON event
    messages = [e["message"] for e in events if e["event"] == "log"]
    report = json.loads((out / "report.json").read_text())
    notes = report["input"]["notes"]
    described = [n for n in notes if "chest" in n]
    assert described, notes
    for text in [*messages, *notes]:
        assert text.isprintable(), repr(text)  # no newline, escape sequence or NUL: one plain log line
    assert all(len(n) < 1000 for n in described)
    assert not any("x" * 64 in n for n in described)  # the 500-character tail was cut
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"
