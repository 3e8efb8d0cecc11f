"""Soak: many analyses in one process through ``pipeline.analyze`` (as the Slicer worker and batch use it),
alternating good and bad inputs. Shows whether memory grows, file handles or temp folders leak, and
whether a good input gives the same result late in a long process as in a fresh one.

    python -m benchmarks.bench_soak [--runs 200] [--method threshold] [--size 64,64,40]

Good inputs are a few small phantoms (NIfTI), analysed with ``--method threshold`` unless models are
installed and ``--method model`` is asked for. Bad inputs cycle through refusals (constant volume, 2-D
image, truncated NIfTI, missing file, non-empty output folder without force, an output folder inside the
input folder, an 8-bit windowed export). Each run writes into a fresh output folder that is deleted after
it is checked, so disk use stays flat.

Measured: RSS after each run (``/proc/self/statm``), open file descriptors (``/proc/self/fd``), entries
left beside the output folders and in the temp folder (a private one: ``TMPDIR`` and ``tempfile.tempdir``);
the code runs from a copy taken at the start, in this process and in the fresh ones, so edits to a shared
checkout during the run cannot make them differ; targets: RSS after the last run within 10 % of
RSS after run 20, no growth in descriptors or temp entries, and every good result (labelmap sha256 and
segment volumes) equal to that of a fresh ``python -m CovidCTAnalysisLib.cli analyze`` process.
Results: ``benchmarks/results/bench_soak.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODULE_DIR = HERE.parent / "CovidCTAnalysis"
PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_TOLERANCE = 0.10


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fingerprint(out: Path) -> dict:
    """What must not change between processes: the labelmap voxels and the segment volumes."""
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelmap.nii.gz")))
    report = json.loads((out / "report.json").read_text())
    return {"labelmap_sha256": hashlib.sha256(lab.tobytes()).hexdigest(),
            "volumes_ml": {s["name"]: round(s["volume_ml"], 6) for s in report["segments"]},
            "lesion_percent": report["statistics"]["lesion_percent"]["total"]}


def _make_inputs(work: Path, size: tuple[int, int, int]) -> tuple[list[Path], list]:
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    good = []
    for seed, kind in ((11, "covid"), (12, "normal"), (13, "pneumonia")):
        path = work / f"good_{kind}_{seed}.nii.gz"
        sitk.WriteImage(make_phantom(kind, seed, size=size).image, str(path))
        good.append(path)
    constant = work / "bad_constant.nii.gz"
    img = sitk.Image(list(size), sitk.sitkInt16)
    img.SetSpacing((5.0, 5.0, 5.0))
    sitk.WriteImage(img + (-1000), str(constant))
    flat = work / "bad_2d.nii.gz"
    sitk.WriteImage(sitk.Image([size[0], size[1]], sitk.sitkInt16), str(flat))
    truncated = work / "bad_truncated.nii"
    sitk.WriteImage(sitk.ReadImage(str(good[0])), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    windowed = work / "bad_windowed_8bit.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(good[0]))).astype(np.float32)
    w8 = sitk.GetImageFromArray(np.clip((arr + 1350) / 1500 * 255, 0, 255).astype(np.uint8))
    w8.CopyInformation(sitk.ReadImage(str(good[0])))
    sitk.WriteImage(w8, str(windowed))
    full = work / "bad_full_out"
    full.mkdir()
    (full / "someone_elses.txt").write_text("x")
    bad = [("constant volume", constant, None), ("2-D image", flat, None), ("truncated NIfTI", truncated, None),
           ("missing file", work / "does_not_exist.nii.gz", None), ("8-bit windowed export", windowed, None),
           ("non-empty output folder", good[0], full), ("output inside the input folder", work, work / "inside")]
    return good, bad


def _fresh_process(inp: Path, out: Path, method: str, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "CovidCTAnalysisLib.cli", "analyze", str(inp), "-o", str(out),
                    "--method", method, "--segment", "always", "--progress", "none"], check=True, env=env,
                   capture_output=True)
    return _fingerprint(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--method", default="threshold", choices=("threshold", "model"))
    parser.add_argument("--size", default="64,64,40", help="phantom size x,y,z")
    parser.add_argument("--out", default=str(RESULTS / "bench_soak.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="covidct-soak-"))
    outs = Path(tempfile.mkdtemp(prefix="covidct-soak-out-"))
    # One copy of the code for this process and the fresh ones (a shared checkout may change meanwhile),
    # and a private temp folder, so that what is counted there is ours alone.
    code = MODULE_DIR
    if "CovidCTAnalysisLib" not in sys.modules:  # (under run_all another benchmark may have imported it)
        code = work / "code"
        shutil.copytree(MODULE_DIR / "CovidCTAnalysisLib", code / "CovidCTAnalysisLib",
                        ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, str(code))
    private_tmp = work / "tmp"
    private_tmp.mkdir()
    saved_tmp = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(private_tmp)
    os.environ["TMPDIR"] = str(private_tmp)
    from CovidCTAnalysisLib.errors import CovidCTError
    from CovidCTAnalysisLib.pipeline import analyze
    size = tuple(int(v) for v in args.size.split(","))
    good, bad = _make_inputs(work, size)
    system_tmp = private_tmp
    tmp_before = set(os.listdir(system_tmp))
    rows, first_good, mismatches, unexpected = [], {}, [], []
    t0 = time.perf_counter()
    for i in range(1, args.runs + 1):
        out = outs / f"run{i:03d}"
        is_good = i % 2 == 1
        t = time.perf_counter()
        if is_good:
            inp = good[(i // 2) % len(good)]
            result = analyze(inp, out, method=args.method, segment="always")
            fp = _fingerprint(out)
            ref = first_good.setdefault(inp.name, fp)
            if fp != ref:
                mismatches.append({"run": i, "input": inp.name})
            outcome = "ok"
            del result
        else:
            what, inp, out_override = bad[(i // 2) % len(bad)]
            try:
                analyze(inp, out_override or out, method=args.method, segment="always")
                outcome = "NOT REFUSED"
                unexpected.append({"run": i, "case": what})
            except CovidCTError as e:
                outcome = f"refused ({type(e).__name__}, exit {e.exit_code})"
            except Exception as e:  # noqa: BLE001 - a traceback instead of a refusal is what we look for
                outcome = f"CRASH {type(e).__name__}: {e}"
                unexpected.append({"run": i, "case": what, "error": outcome})
            if (out_override or out).exists() and out_override is None and any((out_override or out).iterdir()):
                unexpected.append({"run": i, "case": what, "error": "output written for a refused input"})
        shutil.rmtree(out, ignore_errors=True)
        leftovers = sorted(p.name for p in outs.iterdir()) + sorted(p.name for p in work.iterdir()
                                                                    if p.name.startswith("."))
        rows.append({"run": i, "good": is_good, "outcome": outcome, "seconds": round(time.perf_counter() - t, 3),
                     "rss_mb": round(_rss_mb(), 1), "open_fds": _open_fds(), "leftovers": len(leftovers)})
        if i % 20 == 0:
            print(f"run {i}: rss {rows[-1]['rss_mb']} MB, fds {rows[-1]['open_fds']}, leftovers {len(leftovers)}",
                  flush=True)
    wall = time.perf_counter() - t0
    tmp_new = sorted(set(os.listdir(system_tmp)) - tmp_before)
    fresh = {}
    for inp in (g for g in good if g.name in first_good):
        fresh_out = outs / f"fresh_{inp.stem}"
        got = _fresh_process(inp, fresh_out, args.method, code)
        fresh[inp.name] = got == first_good.get(inp.name)
        if not fresh[inp.name]:
            mismatches.append({"fresh_process": inp.name, "fresh": got, "in_process": first_good.get(inp.name)})
        shutil.rmtree(fresh_out, ignore_errors=True)
    at = {r["run"]: r for r in rows}
    ref_run = min(20, args.runs)
    rss_ref, rss_last = at[ref_run]["rss_mb"], rows[-1]["rss_mb"]
    summary = {
        "runs": args.runs, "method": args.method, "phantom_size": list(size), "wall_s": round(wall, 1),
        "rss_mb_run1": rows[0]["rss_mb"], f"rss_mb_run{ref_run}": rss_ref, f"rss_mb_run{args.runs}": rss_last,
        "rss_growth_vs_run20": round(rss_last / rss_ref - 1, 4), "rss_target": f"within {RSS_TOLERANCE:.0%}",
        "rss_ok": abs(rss_last / rss_ref - 1) <= RSS_TOLERANCE, "rss_max_mb": max(r["rss_mb"] for r in rows),
        "open_fds_run1": rows[0]["open_fds"], f"open_fds_run{ref_run}": at[ref_run]["open_fds"],
        f"open_fds_run{args.runs}": rows[-1]["open_fds"], "leftover_entries_max": max(r["leftovers"] for r in rows),
        "temp_entries_left": tmp_new, "same_result_in_process": not [m for m in mismatches if "run" in m],
        "mismatches": mismatches,
        "same_result_as_fresh_process": fresh, "bad_inputs_not_refused_or_crashed": unexpected,
        "python": sys.version.split()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    tempfile.tempdir = saved_tmp[0]
    if saved_tmp[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_tmp[1]
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(outs, ignore_errors=True)
    ok = summary["rss_ok"] and not mismatches and all(fresh.values()) and not unexpected and not tmp_new
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
