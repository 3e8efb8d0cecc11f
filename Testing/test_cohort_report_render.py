"""The cohort report renders in a real browser (headless Chromium): charts drawn, class colours present.

Locally a missing Chromium skips with the reason; under ``CI=true`` it fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from dicom_validators import missing_tool

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import render_cohort_report  # noqa: E402


def test_report_html_renders_with_its_charts_and_table(tmp_path, monkeypatch):
    from CovidCTAnalysisLib.cohort.batch import run_batch
    from CovidCTAnalysisLib.cohort.engines import EngineOptions
    from CovidCTAnalysisLib.cohort.settings import AnalysisSettings
    from CovidCTAnalysisLib.cohort.svg import CLASS_COLOURS
    from PIL import Image

    if render_cohort_report.find_chromium() is None:
        missing_tool("Chromium is not installed (apt-get install chromium); the cohort report is not rendered")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(12):
        (inp / f"p{i:02d}.nii.gz").write_bytes(b"stand-in")
    (inp / "bad_scan.nii.gz").write_bytes(b"stand-in")
    run_batch([str(inp)], tmp_path / "out", AnalysisSettings(method="threshold", analyzer="cohort_standins:fake_analyze"),
              EngineOptions(workers=1))
    png = render_cohort_report.screenshot_html(tmp_path / "out" / "report.html", tmp_path / "shot.png", height=1600)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[:2] == (1600, 1280)
    assert img.std() > 20  # not a blank page
    for name, hex_colour in CLASS_COLOURS.items():  # the bars/histograms/points of each class are drawn
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        close = (np.abs(img - rgb).sum(axis=2) < 30).sum()
        assert close > 50, f"{name} colour {hex_colour} not found in the rendering"
