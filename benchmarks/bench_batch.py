"""Benchmark: a 12-phantom cohort as serial ``covidct analyze`` calls versus ``covidct batch`` (1 and 2 workers).

Serial calls pay Python start-up, imports and model loading for every scan; ``covidct batch`` pays them once
per worker. All three runs analyse the same phantoms with the same settings, one after the other, and the
wall time of each whole command is measured (start-up included). Reports scans per hour and the speed-up
over the serial calls; the target is batch with 2 workers at least 2x the serial throughput.

Models (``--method model``, the default): the installed ones (``$COVIDCT_MODELS_DIR``) when a classifier and a
segmenter are there, else UNTRAINED models with the demo architecture (same loading and inference cost; the
output says which), with ``--segment always`` so the U-Net runs on every scan. ``--method threshold`` needs no
model. ``--device cuda`` runs the GPU variant (batch tasks ask for ``GPU=1``).

    python -m benchmarks.bench_batch [--scans 12] [--size 128,128,96] [--method model|threshold] [--device cpu]

Results: ``benchmarks/results/bench_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KINDS = ("covid", "normal", "pneumonia")
TARGET_SPEEDUP = 2.0


def make_cohort(folder: Path, n: int, size: tuple[int, int, int]) -> float:
    import SimpleITK as sitk
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    t0 = time.perf_counter()
    folder.mkdir(parents=True)
    for i in range(n):
        ph = make_phantom(KINDS[i % 3], 100 + i, size=size)
        sitk.WriteImage(ph.image, str(folder / f"{KINDS[i % 3]}_{i:02d}.nii.gz"), True)
    return time.perf_counter() - t0


def covidct(*args: str) -> list[str]:
    return [sys.executable, "-m", "CovidCTAnalysisLib.cli", *args]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return time.perf_counter() - t0


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch/CUDA: no GPU to name
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=12)
    p.add_argument("--size", default="128,128,96", help="phantom size x,y,z in voxels")
    p.add_argument("--method", choices=("model", "threshold"), default="model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", default="1,2", help="batch worker counts to measure")
    p.add_argument("--output", default=str(RESULTS / "bench_batch.json"))
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(","))
    with tempfile.TemporaryDirectory(prefix="covidct-bench-batch-") as tmp:
        scratch = Path(tmp)
        t_make = make_cohort(scratch / "cohort", a.scans, size)
        print(f"{a.scans} phantoms {size} made in {t_make:.1f} s (not counted)", flush=True)
        common = ["--method", a.method, "--device", a.device]
        models = "none (--method threshold: HU thresholds, no classification)"
        if a.method == "model":
            from benchmarks.bench_analysis import pick_models

            models_dir, models = pick_models(scratch)
            common += ["--models-dir", str(models_dir), "--segment", "always"]
        print(f"models: {models}", flush=True)
        scans = sorted((scratch / "cohort").iterdir())
        runs = {}
        t_serial = 0.0
        for i, scan in enumerate(scans):
            t_serial += timed(covidct("analyze", str(scan), "-o", str(scratch / "serial" / f"{i:02d}"),
                                      "--progress", "none", *common))
        runs["serial_analyze_calls"] = t_serial
        print(f"serial covidct analyze x{len(scans)}: {t_serial:.1f} s", flush=True)
        for w in (int(v) for v in a.workers.split(",")):
            wall = timed(covidct("batch", str(scratch / "cohort"), "-o", str(scratch / f"batch{w}"), "--workers",
                                 str(w), "--progress", "none", *common))
            status = [json.loads(p.read_text())["status"] for p in (scratch / f"batch{w}" / "scans").glob("*/status.json")]
            if status.count("ok") != len(scans):
                raise SystemExit(f"batch --workers {w}: {status.count('ok')} of {len(scans)} scans ok")
            runs[f"batch_{w}_workers"] = wall
            print(f"covidct batch --workers {w}: {wall:.1f} s", flush=True)
    per_hour = {k: round(3600 * a.scans / v, 1) for k, v in runs.items()}
    base = per_hour["serial_analyze_calls"]
    result = {
        "scans": a.scans, "phantom_size": list(size), "method": a.method, "device": a.device, "gpu": gpu_name(),
        "models": models, "wall_s": {k: round(v, 2) for k, v in runs.items()}, "scans_per_hour": per_hour,
        "speedup_vs_serial": {k: round(v / base, 2) for k, v in per_hour.items()},
        "target_speedup_2_workers": TARGET_SPEEDUP, "cores": len(os.sched_getaffinity(0)),
        "machine": platform.platform(), "python": platform.python_version(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "wall time of each whole command, start-up included; the machine is shared, see load_avg_at_end",
    }
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
