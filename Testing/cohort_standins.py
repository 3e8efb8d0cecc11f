"""Stand-in analyzers for the cohort tests (named by ``--analyzer Testing.cohort_standins:NAME``).

They are called like ``pipeline.analyze(input, output_dir, **settings, progress=, model_cache=)`` in the
workers, so a test controls timing, crashes and memory without a model. ``fake_analyze`` writes a
``report.json`` shaped like the real one, with numbers derived from the input's name, so the summary
and report can be checked against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

LOG_ENV = "COVIDCT_TEST_ANALYZER_LOG"  # a file where each call appends the scan it analysed
DELAY_ENV = "COVIDCT_TEST_ANALYZER_DELAY"  # seconds each call sleeps (resume and SIGKILL tests)
CLASSES = ("Normal", "Pneumonia", "COVID-19")


def _numbers(name: str) -> dict:
    h = hashlib.sha256(name.encode()).digest()
    left, right = h[0] / 25.5, h[1] / 25.5
    cls = CLASSES[h[2] % 3]
    return {"class": cls, "left": left, "right": right, "total": (left + right) / 2,
            "probs": {c: (0.8 if c == cls else 0.1) for c in CLASSES}}


def fake_analyze(input_path, output_dir, **kwargs):
    """Write report.json + preview.png like ``covidct analyze`` (after an optional delay); ``crash`` in the
    input name exits the process, ``sleepy`` sleeps 2 minutes, ``hog`` allocates memory until killed, ``bad`` raises
    a plain bug."""
    name = Path(input_path).name
    if os.environ.get(LOG_ENV):
        with open(os.environ[LOG_ENV], "a") as f:
            f.write(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    if "crash" in name:
        os._exit(3)
    if "sleepy" in name:
        time.sleep(120)  # past any --timeout the test gives
    if "hog" in name:
        blocks = []
        for _ in range(400):  # up to 4 GB in 10 MB steps, slowly enough for the watchdog to see it
            blocks.append(np.ones(10 * 2**20 // 8))
            time.sleep(0.01)
    if "bad" in name:
        raise ZeroDivisionError("division by zero")
    n = _numbers(name)
    out = Path(output_dir)
    out.mkdir(parents=True)
    report = {
        "schema_version": "1.1", "method": kwargs.get("method"), "input": {"path": str(input_path), "notes": []},
        "classification": {"ran": True, "label": n["class"], "probabilities": n["probs"]},
        "segments": [{"label": 1, "volume_ml": 2000.0}, {"label": 2, "volume_ml": 2200.0},
                     {"label": 3, "volume_ml": 10 * n["total"]}],
        "statistics": {"lesion_percent": {"left": n["left"], "right": n["right"], "total": n["total"]}},
        "models": [], "warnings": [], "timings_s": {"total": 0.01}, "files": {"report": "report.json",
                                                                             "preview": "preview.png"},
    }
    (out / "report.json").write_text(json.dumps(report))
    (out / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return None
