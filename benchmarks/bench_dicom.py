"""Benchmark: load the real P001 DICOM series (512x512x148, JPEG Lossless) and write its DICOM SEG.

* ``load_dicom_series`` on ``covid-ct-md/dicom/P001`` (header scan, series choice,
  slice ordering and checks, GDCM decode of 148 JPEG Lossless files);
* ``write_dicom_seg`` on ``P001-repaired-uids`` (the same pixels with valid UIDs)
  for a labelmap from the threshold method when it is present
  (``lesions_threshold.threshold_labelmap``), else a quick HU threshold.

Median of ``--repeats`` runs (default 3) on this machine's CPU.

    python -m benchmarks.bench_dicom [--repeats 3]

Results: ``benchmarks/results/bench_dicom.json``. Skips (exit 0, with a message)
when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED_DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def _labelmap(volume) -> tuple[sitk.Image, str]:
    """The threshold method's labelmap when available, else a quick HU-threshold one."""
    try:
        from CovidCTAnalysisLib.threshold.lesions import threshold_labelmap

        return threshold_labelmap(volume.image), "lesions_threshold.threshold_labelmap"
    except ImportError:
        pass
    from CovidCTAnalysisLib.loading.volume import labelmap_like

    hu = sitk.GetArrayFromImage(volume.image)
    lung = (hu > -1000) & (hu < -300)
    labels = np.zeros(hu.shape, np.uint8)
    half = hu.shape[2] // 2
    labels[:, :, half:][lung[:, :, half:]] = 1
    labels[:, :, :half][lung[:, :, :half]] = 2
    labels[lung & (hu > -700)] = 3
    return labelmap_like(labels, volume.image), "quick HU threshold (-1000..-300 lung, > -700 lesion)"


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from CovidCTAnalysisLib.loading.dicom_series import load_dicom_series
    from CovidCTAnalysisLib.results.dicom_seg import write_dicom_seg

    original = SHARED_DATA / "covid-ct-md" / "dicom" / "P001"
    repaired = SHARED_DATA / "covid-ct-md" / "dicom" / "P001-repaired-uids"
    if not original.is_dir() or not repaired.is_dir():
        print(f"bench_dicom: skipped, {original} or {repaired} is absent (set COVIDCT_SHARED_DATA)")
        return 0

    load_s, load_all, volume = _timed(lambda: load_dicom_series(original), args.repeats)
    size = volume.image.GetSize()  # type: ignore[attr-defined]
    print(f"load P001 ({size[0]}x{size[1]}x{size[2]}, JPEG Lossless): median {load_s:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in load_all)})")

    source_volume = load_dicom_series(repaired)
    t0 = time.perf_counter()
    labelmap, how = _labelmap(source_volume)
    label_s = time.perf_counter() - t0
    models = [{"id": "bench-labelmap", "version": "0"}]
    with tempfile.TemporaryDirectory(prefix="bench_dicom_") as tmp:
        seg_s, seg_all, result = _timed(
            lambda: write_dicom_seg(labelmap, source_volume.dicom, Path(tmp) / "segmentation.dcm", models),
            args.repeats)
        seg_bytes = Path(tmp, "segmentation.dcm").stat().st_size if result.written else 0  # type: ignore[attr-defined]
    print(f"write SEG (P001-repaired-uids, {result.n_frames} frames, {seg_bytes / 1e6:.1f} MB): "  # type: ignore[attr-defined]
          f"median {seg_s:.2f} s ({', '.join(f'{t:.2f}' for t in seg_all)}); labelmap by {how} in {label_s:.1f} s")

    record = {
        "benchmark": "bench_dicom",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "load_p001": {"size": list(size), "transfer_syntax": "JPEG Lossless (1.2.840.10008.1.2.4.70)",
                      "median_s": round(load_s, 3), "runs_s": [round(t, 3) for t in load_all]},
        "write_seg_p001_repaired": {"written": result.written, "n_frames": result.n_frames,  # type: ignore[attr-defined]
                                    "bytes": seg_bytes, "labelmap": how, "median_s": round(seg_s, 3),
                                    "runs_s": [round(t, 3) for t in seg_all]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_dicom.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {RESULTS / 'bench_dicom.json'}")
    return 0 if result.written else 1  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
