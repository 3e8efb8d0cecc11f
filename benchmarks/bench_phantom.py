"""Benchmark: time and peak memory of ``make_phantom``.

Cases (each in a fresh Python process, so that its peak RSS is its own):

* ``small``: covid, 96 x 96 x 64 (what the tests build), median of 5 runs;
* ``default``: covid with the seed's own grid (1.2-2.0 mm in-plane, 1.5-5 mm slices), seeds 0-2;
* ``large``: covid, 512 x 512 x 300 at 0.7 x 0.7 x 1.5 mm (a full-resolution chest CT),
  the grid ``bench_analysis`` uses. Target: < 20 s and < 3 GB.

    python -m benchmarks.bench_phantom

Results: ``benchmarks/results/bench_phantom.json`` (wall and CPU seconds, peak RSS in MB).
On a shared machine wall time includes waiting for the CPU; CPU time does not.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

_CHILD = r"""
import json, resource, sys, time
from CovidCTAnalysisLib.phantom.generator import make_phantom
kw = json.loads(sys.argv[1])
runs = []
for _ in range(kw.pop("repeats")):
    w, c = time.perf_counter(), time.process_time()
    ph = make_phantom(**kw)
    runs.append({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c})
print(json.dumps({"runs": runs, "size": ph.image.GetSize(), "spacing": ph.image.GetSpacing(),
                  "lesion_ml": ph.lesion_volume_ml(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


def _run(kwargs: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "CovidCTAnalysis") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kwargs)], capture_output=True, text=True,
                         check=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["median_wall_s"] = statistics.median(r["wall_s"] for r in result["runs"])
    result["median_cpu_s"] = statistics.median(r["cpu_s"] for r in result["runs"])
    return result


def main() -> int:
    cases = {
        "small_96x96x64": dict(kind="covid", seed=0, size=[96, 96, 64], repeats=5),
        **{f"default_grid_seed{s}": dict(kind="covid", seed=s, repeats=1) for s in range(3)},
        "large_512x512x300": dict(kind="covid", seed=0, size=[512, 512, 300], spacing=[0.7, 0.7, 1.5], repeats=1),
    }
    results = {}
    for name, kwargs in cases.items():
        results[name] = r = _run(kwargs)
        print(f"{name}: size {r['size']} spacing {[round(s, 3) for s in r['spacing']]}: "
              f"wall {r['median_wall_s']:.2f} s, cpu {r['median_cpu_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "make_phantom",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "results": results,
    }
    (RESULTS / "bench_phantom.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
