"""Benchmark: the full ``covidct analyze`` of a 512×512×300 phantom at 0.7×0.7×1.5 mm on the CPU.

Reports wall time and peak RSS per stage (a sampler thread reads /proc/self/statm
every 20 ms; the whole child's peak comes from ``getrusage(RUSAGE_CHILDREN)``),
and the MONAI COVID-19-20 challenge-baseline inference settings on the same
volume (BasicUNet features (32, 32, 64, 128, 256, 32), 1.25×1.25×5 mm,
192×192×16 patches, overlap 0.5, Gaussian blending, sw_batch_size 2) for comparison.

Models: the installed ones (``$COVIDCT_MODELS_DIR``, e.g. after ``make demo``) when a
classifier and a segmenter are there, else untrained models with the default demo
architecture (timing is the same; the output says which). Segmentation is forced
(``--segment always``) so that it is always measured.

    python -m benchmarks.bench_analysis [--size 512,512,300] [--spacing 0.7,0.7,1.5] [--skip-baseline]

Targets on the 2-core development machine: whole analysis (model loading included)
≤ 30 s, peak RSS ≤ 4 GB. Results: ``benchmarks/results/bench_analysis.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_TOTAL_S = 30.0
TARGET_RSS_GB = 4.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Sampler:
    """Peak RSS per stage: the current stage is whatever step the pipeline last reported."""

    def __init__(self) -> None:
        self.stage = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
            self._stop.wait(0.02)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _triple(text: str, cast=float) -> tuple:
    vals = tuple(cast(v) for v in text.split(","))
    if len(vals) != 3:
        raise SystemExit(f"expected three comma-separated values, got {text!r}")
    return vals


# --- models ---------------------------------------------------------------------------------------


def untrained_demo_models(root: Path) -> None:
    """Install untrained classifier + segmenter with the default demo architecture into ``root``.

    Architecture and preprocessing mirror ``training/demo.py`` (ResNet-50 at 96 px, every 2nd
    lung slice, top-30 % mean; UNet (16, 32, 64, 128) at 2.5 mm with 64³ windows), so the
    timing is that of the demo models.
    """
    from CovidCTAnalysisLib import INTENDED_USE
    from CovidCTAnalysisLib.constants import CLASS_NAMES, LABEL_NAMES
    from CovidCTAnalysisLib.models.folder import save_model_folder
    from CovidCTAnalysisLib.models.networks import (
        DEFAULT_SEGMENTER_CHANNELS,
        DEFAULT_SEGMENTER_STRIDES,
        build_classifier,
        build_segmenter,
    )
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    common = {"sha256": "0" * 64, "demo": True, "eval_metrics": {}, "intended_use": INTENDED_USE,
              "trained_on": "nothing: UNTRAINED benchmark weights (timing only)", "training_data": {}}
    cls = {**common, "id": "bench-untrained-classifier", "version": "0.0.0", "task": "classification",
           "architecture": {"name": "resnet50", "kwargs": {}}, "labels": list(CLASS_NAMES),
           "preprocessing": {"input_size": 96, "slice_step": 2,
                             "aggregation": {"rule": "top_fraction_mean", "fraction": 0.3}}}
    seg_labels = {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}}
    seg = {**common, "id": "bench-untrained-segmenter", "version": "0.0.0", "task": "segmentation",
           "architecture": {"name": "monai.UNet", "kwargs": {"channels": list(DEFAULT_SEGMENTER_CHANNELS),
                                                             "strides": list(DEFAULT_SEGMENTER_STRIDES),
                                                             "num_res_units": 2}},
           "labels": seg_labels,
           "preprocessing": {"spacing_mm": [2.5, 2.5, 2.5], "roi_size": [64, 64, 64], "sw_overlap": 0.25,
                             "hu_range": [-1024, 400], "margin_mm": 10.0}}
    registry = ModelRegistry(root)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_folder(build_classifier(len(CLASS_NAMES)), cls, Path(tmp) / "cls")
        save_model_folder(build_segmenter(len(seg_labels)), seg, Path(tmp) / "seg")
        registry.install(Path(tmp) / "cls")
        registry.install(Path(tmp) / "seg")


def pick_models(scratch: Path) -> tuple[Path, str]:
    """(registry folder, description): the installed models if complete, else untrained ones."""
    from CovidCTAnalysisLib.errors import ModelError
    from CovidCTAnalysisLib.models.registry import ModelRegistry, default_models_dir

    root = default_models_dir()
    try:
        reg = ModelRegistry(root)
        lines = [reg.resolve(t).label_line() for t in ("classification", "segmentation")]
        return root, "installed models: " + "; ".join(lines)
    except ModelError:
        pass
    fresh = scratch / "models"
    untrained_demo_models(fresh)
    return fresh, (f"UNTRAINED models with the default demo architecture (no complete model set in {root}; "
                   "run `make demo` to benchmark the demo models)")


# --- children -------------------------------------------------------------------------------------


def child_analysis(input_path: str, out_dir: str, models_dir: str, device: str, threads: int, result: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from CovidCTAnalysisLib.pipeline import analyze
    from CovidCTAnalysisLib.progress import Progress

    with _Sampler() as sampler:

        class StageProgress(Progress):
            def step(self, step: str, fraction: float, message: str = "") -> None:
                sampler.stage = step

        t0 = time.perf_counter()
        res = analyze(input_path, out_dir, method="model", segment="always", device=device,
                      models_dir=models_dir, progress=StageProgress())
        wall = time.perf_counter() - t0
    Path(result).write_text(json.dumps({
        "wall_s": wall, "timings_s": res.report["timings_s"], "peak_rss_by_step_mb":
        {k: round(v / 2**20, 1) for k, v in sampler.peaks.items()}, "classification": res.report["classification"],
        "models": res.model_lines, "device": res.report["device"]}))


def child_baseline(input_path: str, device: str, threads: int, result: str) -> None:
    """MONAI COVID-19-20 challenge-baseline inference settings (run_net.py) on the same volume."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import BasicUNet

    torch.set_num_threads(threads)
    from CovidCTAnalysisLib.models.device import select_device

    dev = select_device(device)
    with _Sampler() as sampler:
        t0 = time.perf_counter()
        img = sitk.ReadImage(input_path, sitk.sitkFloat32)
        spacing = (1.25, 1.25, 5.0)
        size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing, strict=True)]
        res = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing,
                            img.GetDirection(), -1000.0, sitk.sitkFloat32)
        arr = np.clip((sitk.GetArrayFromImage(res) + 1000.0) / 1500.0, 0.0, 1.0)  # a_min -1000, a_max 500
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0)))[None, None].to(dev)  # (1, 1, x, y, z)
        t_prep = time.perf_counter() - t0
        sampler.stage = "baseline_inference"
        net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(32, 32, 64, 128, 256, 32),
                        dropout=0.1).eval().to(dev)
        inferer = SlidingWindowInferer(roi_size=(192, 192, 16), sw_batch_size=2, overlap=0.5, mode="gaussian",
                                       padding_mode="replicate")
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = inferer(x, net)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_inf = time.perf_counter() - t1
    Path(result).write_text(json.dumps({
        "device": str(dev), "resampled_size_xyz": size, "prepare_s": t_prep, "inference_s": t_inf, "output_shape": list(out.shape),
        "peak_rss_mb": round(max(sampler.peaks.values()) / 2**20, 1)}))


def _run_child(args: list[str]) -> tuple[dict, float, float]:
    """Run this module as a child; returns (its result JSON, its peak RSS in MB, its process wall time)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.bench_analysis", *args, "--result", result],
                       check=True, cwd=HERE.parent)
        process_s = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        data = json.loads(Path(result).read_text())
    finally:
        Path(result).unlink(missing_ok=True)
    # ru_maxrss is the max over all waited-for children; a later, smaller child cannot be told apart
    peak_mb = after / 1024.0 if after > before else data.get("peak_rss_mb", after / 1024.0)
    return data, peak_mb, process_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark the full analysis on a large phantom (CPU).")
    p.add_argument("--size", default="512,512,300")
    p.add_argument("--spacing", default="0.7,0.7,1.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--output", default=str(RESULTS / "bench_analysis.json"))
    p.add_argument("--child", nargs=4, metavar=("INPUT", "OUT", "MODELS", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--child-baseline", metavar="INPUT", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_analysis(*a.child, threads=a.threads, result=a.result)
        return 0
    if a.child_baseline:
        child_baseline(a.child_baseline, a.device, threads=a.threads, result=a.result)
        return 0

    import SimpleITK as sitk
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    size, spacing = _triple(a.size, int), _triple(a.spacing)
    with tempfile.TemporaryDirectory(prefix="covidct-bench-") as tmp:
        scratch = Path(tmp)
        t0 = time.perf_counter()
        ph = make_phantom("covid", a.seed, size=size, spacing=spacing)
        input_path = scratch / "phantom.nii.gz"
        sitk.WriteImage(ph.image, str(input_path), True)
        del ph
        t_phantom = time.perf_counter() - t0
        print(f"phantom {size} at {spacing} mm made and written in {t_phantom:.1f} s (not counted)", flush=True)
        models_dir, models_desc = pick_models(scratch)
        print(f"models: {models_desc}", flush=True)
        analysis, peak_mb, process_s = _run_child(["--threads", str(a.threads), "--child", str(input_path),
                                        str(scratch / "out"), str(models_dir), a.device])
        baseline = None
        if not a.skip_baseline:
            print("MONAI challenge-baseline inference settings ...", flush=True)
            baseline, _, _ = _run_child(["--threads", str(a.threads), "--device", a.device,
                                      "--child-baseline", str(input_path)])

    t = analysis["timings_s"]
    total = float(analysis["wall_s"])
    seg_s = float(t.get("segment", 0.0))
    report = {
        "benchmark": "bench_analysis", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads,
                    "python": platform.python_version()},
        "volume": {"size": list(size), "spacing_mm": list(spacing), "kind": "covid phantom", "seed": a.seed},
        "models": models_desc, "model_lines": analysis["models"], "device": analysis["device"],
        "classification": analysis["classification"].get("label"),
        "analysis": {"wall_s": round(total, 2), "process_wall_s": round(process_s, 2), "stages_s": t, "peak_rss_mb": round(peak_mb, 1),
                     "peak_rss_by_step_mb": analysis["peak_rss_by_step_mb"]},
        "targets": {"total_s": TARGET_TOTAL_S, "peak_rss_gb": TARGET_RSS_GB,
                    "total_ok": total <= TARGET_TOTAL_S, "rss_ok": peak_mb / 1024 <= TARGET_RSS_GB},
    }
    if baseline:
        report["monai_challenge_baseline"] = baseline
        report["segment_time_ratio_ours_to_baseline"] = round(seg_s / baseline["inference_s"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nFull analysis of {size} @ {spacing} mm on {analysis['device']}: {total:.1f} s wall "
          f"(target ≤ {TARGET_TOTAL_S:.0f} s: {'OK' if report['targets']['total_ok'] else 'MISSED'}), "
          f"peak RSS {peak_mb / 1024:.2f} GB (target ≤ {TARGET_RSS_GB:.0f} GB: "
          f"{'OK' if report['targets']['rss_ok'] else 'MISSED'})")
    print(f"  (the whole child process, Python start and torch import included: {process_s:.1f} s)")
    for k, v in t.items():
        print(f"  {k:<18} {v:7.2f} s")
    print(f"  peak RSS by reported step (MB): {analysis['peak_rss_by_step_mb']}")
    if baseline:
        print(f"MONAI challenge baseline on {baseline['device']} (BasicUNet, 1.25x1.25x5 mm -> {baseline['resampled_size_xyz']}, 192x192x16, "
              f"overlap 0.5): inference {baseline['inference_s']:.1f} s (+ {baseline['prepare_s']:.1f} s resampling), "
              f"peak RSS {baseline['peak_rss_mb'] / 1024:.2f} GB")
        print(f"ratio of our segmentation time to the baseline inference: "
              f"{report['segment_time_ratio_ours_to_baseline']:.2f}")
    print(f"models: {models_desc}")
    print(f"written {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
