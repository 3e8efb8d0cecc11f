"""The README picture of the cohort report: ``covidct batch`` over 30 phantoms, ``report.html`` shot by Chromium.

    python tools/render_cohort_report.py [--scans 30] [--method threshold] [--out Resources/Screenshots/cohort-report.png]

``--method threshold`` needs no model (no classification: the report then shows "not classified"). The page
is rendered by headless Chromium (Debian's ``chromium`` package); ``screenshot_html`` is shared with the test
that checks the rendering (``Testing/test_cohort_report_render.py``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
KINDS = ("covid", "normal", "pneumonia")
MAX_BYTES = 400_000  # the README picture stays small


class ChromiumMissing(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_html(html: Path, png: Path, width: int = 1280, height: int = 2000, timeout_s: float = 120) -> Path:
    """Render ``html`` in headless Chromium into ``png`` (``width`` x ``height`` CSS pixels)."""
    chromium = find_chromium()
    if chromium is None:
        raise ChromiumMissing("Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="covidct-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", Path(html).resolve().as_uri()]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0 or not Path(png).is_file():
        raise RuntimeError(f"chromium failed ({run.returncode}): {run.stderr[-2000:]}")
    return Path(png)


def make_cohort(folder: Path, n: int) -> None:
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO / "CovidCTAnalysis"))
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    folder.mkdir(parents=True)
    for i in range(n):
        ph = make_phantom(KINDS[i % 3], 200 + i, size=(96, 96, 64))
        sitk.WriteImage(ph.image, str(folder / f"{KINDS[i % 3]}_{i:02d}.nii.gz"), True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=30)
    p.add_argument("--method", default="threshold")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "Resources" / "Screenshots" / "cohort-report.png"))
    p.add_argument("--keep", help="keep the cohort folder here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="covidct-cohort-shot-") as tmp:
        work = Path(a.keep) if a.keep else Path(tmp)
        make_cohort(work / "phantoms", a.scans)
        out = work / "cohort"
        subprocess.run([sys.executable, "-m", "CovidCTAnalysisLib.cli", "batch", str(work / "phantoms"), "-o",
                        str(out), "--method", a.method, "--workers", str(a.workers), "--progress", "plain"],
                       check=False)
        shot = screenshot_html(out / "report.html", work / "shot.png", height=1900)
        from PIL import Image

        Image.open(shot).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(a.out, optimize=True)
    size = Path(a.out).stat().st_size
    print(f"wrote {a.out} ({size} bytes)")
    return 0 if size < MAX_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())
