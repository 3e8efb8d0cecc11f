"""Benchmark: one click to an updated labelmap (``covidct refine``'s core, model already loaded) on a
512x512x300 phantom at 0.7x0.7x1.5 mm, and the start-up a persistent worker pays once.

* ``click``: ``interactive.refine.Refiner.click`` per click (ROI crop, resampling to the model grid,
  guidance, sliding-window inference, map back, merge), median over ``--clicks`` clicks on lesion
  and lung voxels spread over the scan;
* ``worker_startup``: a fresh Python process importing the core and loading the model
  (``load_model_folder``, sha256 included), what a persistent worker pays once;
* ``refiner_setup``: holding the labelmap as an array (``Refiner(...)``), once per scan.

The model: the installed interactive model (``--models-dir`` / ``$COVIDCT_MODELS_DIR``, default
``.models``), else an UNTRAINED network with the demo architecture (the timing does not depend on the
weights; the JSON says which). ``python -m benchmarks.bench_refine [--clicks 9]``;
results in ``benchmarks/results/bench_refine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEMO_KWARGS = {"in_channels": 3, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1}
DEMO_PREP = {"spacing_mm": [2.5, 2.5, 2.5], "roi_size": [40, 40, 40], "hu_range": [-1024, 400],
             "guidance_sigma_mm": 5.0, "channels": ["image", "positive", "negative"]}


def _model_folder(models_dir: str | None, work: Path) -> tuple[Path, str]:
    from CovidCTAnalysisLib.errors import ModelError
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    try:
        registry = ModelRegistry(root=models_dir or os.environ.get("COVIDCT_MODELS_DIR") or HERE.parent / ".models")
        meta = registry.resolve("interactive", None)
        return registry.folder(meta), f"installed {meta.label_line()}"
    except ModelError:
        from CovidCTAnalysisLib import INTENDED_USE
        from CovidCTAnalysisLib.models.folder import save_model_folder
        from CovidCTAnalysisLib.models.networks import build_interactive

        meta = {"id": "bench-untrained-interactive", "version": "0.0.0", "task": "interactive", "demo": True,
                "eval_metrics": {}, "intended_use": INTENDED_USE, "trained_on": "nothing: untrained (timing only)",
                "labels": {"0": "background", "1": "Lesion"}, "click_simulation": {"note": "untrained"},
                "architecture": {"name": "monai.UNet", "kwargs": DEMO_KWARGS}, "preprocessing": DEMO_PREP}
        save_model_folder(build_interactive(**DEMO_KWARGS), meta, work / "model")
        return work / "model", "UNTRAINED network with the demo architecture (no interactive model installed)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clicks", type=int, default=9)
    p.add_argument("--models-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    import torch
    from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE, Click
    from CovidCTAnalysisLib.interactive.refine import Refiner
    from CovidCTAnalysisLib.models.folder import load_model_folder
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder, which = _model_folder(args.models_dir, Path(tmp))
        t = time.perf_counter()
        ph = make_phantom("covid", 7, size=(512, 512, 300), spacing=(0.7, 0.7, 1.5))
        make_s = time.perf_counter() - t
        code = ("import time; t = time.perf_counter(); from CovidCTAnalysisLib.interactive.refine import Refiner; "
                "from CovidCTAnalysisLib.models.folder import load_model_folder; "
                f"load_model_folder({str(folder)!r}); print(time.perf_counter() - t)")
        t = time.perf_counter()
        inner = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.split()[-1])
        startup = time.perf_counter() - t
        model = load_model_folder(folder)
        t = time.perf_counter()
        refiner = Refiner(ph.image, ph.truth, model)
        setup = time.perf_counter() - t
        labels = refiner.labels
        rng = np.random.default_rng(0)
        times = []
        for k in range(args.clicks):
            kind = ADD if k % 3 else REMOVE
            zz, yy, xx = np.nonzero(labels == (3 if k % 2 else 1))
            i = int(rng.integers(len(zz)))
            lps = ph.image.TransformIndexToPhysicalPoint((int(xx[i]), int(yy[i]), int(zz[i])))
            step = refiner.click(Click(kind, lps, f"bench #{k + 1}"))
            times.append(step.seconds)
    out = {
        "what": "one click to an updated labelmap, model loaded (interactive.refine.Refiner.click)",
        "image": {"size": list(ph.image.GetSize()), "spacing_mm": list(ph.image.GetSpacing())},
        "model": which,
        "click_seconds": {"median": round(statistics.median(times), 3), "min": round(min(times), 3),
                          "max": round(max(times), 3), "all": [round(t, 3) for t in times]},
        "worker_startup_seconds": {"process_total": round(startup, 2), "imports_and_model_load": round(inner, 2)},
        "refiner_setup_seconds": round(setup, 3),
        "phantom_seconds": round(make_s, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_refine.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
