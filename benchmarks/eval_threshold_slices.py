"""Evaluate ``--method threshold`` on the real CTs in ``../shared/data`` and time it.

* Slice-level lesion localisation on COVID-CT-MD P001 (COVID-19) and cap001 (CAP)
  against the radiologists' slice labels (``labels.json``, z index = NIfTI z): a
  slice is positive when it holds at least 50 mm³ of lesion. The threshold
  method (``lesions_threshold.find_lesions``) is compared with a naive HU band
  (every lung voxel in ``GGO_BAND_HU[0]`` .. ``CONSOLIDATION_BAND_HU[1]``) on the
  same lungs. Specificity is over all slices and, in brackets, over lung slices.
* Lesion volume on normal001 (should be ~0), lung volumes of the three cases
  (and of P001 from its full-resolution DICOM series).
* Left/right against TotalSegmentator's lobes on ``totalsegmentator/example_ct``
  (left = 13, 14; right = 15, 16, 17) and lung voxel counts on the two LIDC slices
  against lungmask R231 (``lidc-lungmask/reference.json``).
* Wall time and peak RSS of ``threshold_labelmap`` (lungs + lesions) on a
  512×512×300 phantom at 0.7×0.7×1.5 mm, in a child process (target ≤ 8 s, ≤ 1.5 GB
  above the loaded image on the 2-core development machine; RSS sampled from
  ``/proc/self/statm`` every 20 ms).

    python -m benchmarks.eval_threshold_slices [--skip-timing] [--robustness]

Results: ``benchmarks/results/eval_threshold_slices.json`` and a picture,
``eval_threshold_slices.png`` (slice labels along z, example slices). Without
``../shared/data`` only the timing runs.
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

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, GGO_BAND_HU
from CovidCTAnalysisLib.threshold.lesions import find_lesions
from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED_DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
MIN_SLICE_LESION_MM3 = 50.0
TARGET_S = 8.0
TARGET_GB = 1.5


def slice_positive(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per array z: does the slice hold at least 50 mm³ of ``mask``?"""
    return mask.sum(axis=(1, 2)) * float(np.prod(spacing)) >= MIN_SLICE_LESION_MM3


def scores(positive: np.ndarray, truth: np.ndarray, lung_slices: np.ndarray) -> dict:
    tp = int(np.sum(positive & truth))
    tn = int(np.sum(~positive & ~truth))
    tn_lung = int(np.sum(~positive & ~truth & lung_slices))
    return {
        "sensitivity": round(tp / max(int(truth.sum()), 1), 3),
        "specificity": round(tn / max(int((~truth).sum()), 1), 3),
        "specificity_lung_slices": round(tn_lung / max(int((~truth & lung_slices).sum()), 1), 3),
        "positive_slices": int(positive.sum()),
    }


def naive_band(image: sitk.Image, lungs: sitk.Image) -> np.ndarray:
    hu = sitk.GetArrayViewFromImage(image)
    return (sitk.GetArrayViewFromImage(lungs) > 0) & (hu >= GGO_BAND_HU[0]) & (hu <= CONSOLIDATION_BAND_HU[1])


def evaluate_case(data: Path, case: str, info: dict, keep: dict | None = None) -> dict:
    image = sitk.ReadImage(str(data / "covid-ct-md" / info["file"]))
    t0 = time.perf_counter()
    lungs = segment_lungs(image)
    t1 = time.perf_counter()
    lesions = sitk.GetArrayFromImage(find_lesions(image, lungs)) > 0
    t2 = time.perf_counter()
    ext = lung_extent(lungs)
    spacing = image.GetSpacing()
    out = {
        "file": info["file"],
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 3) for s in spacing],
        "left_ml": round(ext.left_ml, 1),
        "right_ml": round(ext.right_ml, 1),
        "lesion_ml": round(float(lesions.sum() * np.prod(spacing) / 1000.0), 1),
        "seconds_lungs": round(t1 - t0, 2),
        "seconds_lesions": round(t2 - t1, 2),
    }
    labels = info.get("slice_infection_label_by_nifti_z")
    if labels:
        truth = np.asarray(labels, dtype=bool)
        lung_slices = (sitk.GetArrayViewFromImage(lungs) > 0).any(axis=(1, 2))
        out["n_slices"] = int(truth.size)
        out["n_positive_slices"] = int(truth.sum())
        out["threshold"] = scores(slice_positive(lesions, spacing), truth, lung_slices)
        naive_positive = slice_positive(naive_band(image, lungs), spacing)
        out["naive_band"] = scores(naive_positive, truth, lung_slices)
        if keep is not None:
            keep[case] = {
                "hu": sitk.GetArrayFromImage(image),
                "lungs": sitk.GetArrayFromImage(lungs),
                "lesions": lesions,
                "truth": truth,
                "threshold": slice_positive(lesions, spacing),
                "naive": naive_positive,
            }
    return out


def save_figure(kept: dict, path: Path) -> None:
    """Per case: the slice labels (truth / threshold / naive band) along z, and three axial slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kept), 4, figsize=(16, 4.2 * len(kept)), squeeze=False)
    for row, (case, k) in zip(axes, kept.items(), strict=True):
        strip = np.stack([k["truth"], k["threshold"], k["naive"]]).astype(float)
        row[0].imshow(strip, aspect="auto", cmap="Reds", interpolation="nearest", vmin=0, vmax=1)
        row[0].set_yticks([0, 1, 2], ["radiologists", "threshold", "naive band"])
        row[0].set_xlabel("slice z (0 = inferior)")
        row[0].set_title(f"{case}: slices with lesion")
        lung_z = np.nonzero(k["lungs"].any(axis=(1, 2)))[0]
        for ax, q in zip(row[1:], (0.3, 0.5, 0.7), strict=True):
            z = int(lung_z[int(q * (len(lung_z) - 1))])
            ax.imshow(k["hu"][z], cmap="gray", vmin=-1200, vmax=200)
            ax.contour(k["lungs"][z] > 0, [0.5], colors="y", linewidths=0.6)
            if k["lesions"][z].any():
                ax.contour(k["lesions"][z], [0.5], colors="r", linewidths=0.8)
            ax.set_title(
                f"z={z} labelled {'+' if k['truth'][z] else '-'}, threshold {'+' if k['threshold'][z] else '-'}"
            )
            ax.axis("off")
    fig.suptitle("--method threshold vs radiologists' slice labels (lungs yellow, lesions red)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate_dicom_p001(data: Path, truth: list[int]) -> dict:
    """P001 at full resolution (the DICOM series; its z index is the NIfTI z index)."""
    from CovidCTAnalysisLib.loading.load import load_ct

    image = load_ct(data / "covid-ct-md" / "dicom" / "P001").image
    t0 = time.perf_counter()
    lungs = segment_lungs(image)
    t1 = time.perf_counter()
    lesions = sitk.GetArrayFromImage(find_lesions(image, lungs)) > 0
    t2 = time.perf_counter()
    ext = lung_extent(lungs)
    lung_slices = (sitk.GetArrayViewFromImage(lungs) > 0).any(axis=(1, 2))
    return {
        "size": list(image.GetSize()),
        "left_ml": round(ext.left_ml, 1),
        "right_ml": round(ext.right_ml, 1),
        "lesion_ml": round(float(lesions.sum() * np.prod(image.GetSpacing()) / 1000.0), 1),
        "threshold": scores(slice_positive(lesions, image.GetSpacing()), np.asarray(truth, dtype=bool), lung_slices),
        "seconds_lungs": round(t1 - t0, 2),
        "seconds_lesions": round(t2 - t1, 2),
    }


def evaluate_example_ct(data: Path) -> dict:
    folder = data / "totalsegmentator"
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_v1_full112slices_a7eec60.nii.gz")))
    pred = sitk.GetArrayFromImage(segment_lungs(image))
    ref_left, ref_right = np.isin(ref, (13, 14)), np.isin(ref, (15, 16, 17))

    def dice(a, b):
        return round(float(2.0 * np.sum(a & b) / max(int(a.sum() + b.sum()), 1)), 3)

    return {
        "dice_left": dice(pred == 1, ref_left),
        "dice_right": dice(pred == 2, ref_right),
        "reference_left_labelled_right": int(np.sum(ref_left & (pred == 2))),
        "reference_right_labelled_left": int(np.sum(ref_right & (pred == 1))),
    }


def evaluate_lidc(data: Path) -> dict:
    folder = data / "lidc-lungmask"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    pred = sitk.GetArrayFromImage(segment_lungs(reader.Execute()))
    return {
        "left_voxels": int(np.sum(pred == 1)),
        "right_voxels": int(np.sum(pred == 2)),
        "r231_left_voxels": 36536,
        "r231_right_voxels": 64752,
    }


# One rule constant at a time, moved off its value: do the slice scores hold up?
ROBUSTNESS = {
    "LOCAL_MEAN_MIN_HU": (-750.0, -650.0),
    "MIN_LESION_MM3": (500.0, 2000.0),
    "LOCAL_SIGMA_MM": (3.0, 6.0),
    "RIM_MM": (2.0, 5.0),
    "SOLID_DEPTH_MM": (6.0, 14.0),
}


def robustness(data: Path, labels: dict) -> list[dict]:
    """Slice scores on P001 and cap001 with each rule constant moved to the values in ``ROBUSTNESS``."""
    from CovidCTAnalysisLib.threshold import lesions as rule
    cases = {}
    for case in ("P001", "cap001"):
        image = sitk.ReadImage(str(data / "covid-ct-md" / labels[case]["file"]))
        cases[case] = (image, segment_lungs(image), np.asarray(labels[case]["slice_infection_label_by_nifti_z"], bool))
    rows = []
    for name, values in ROBUSTNESS.items():
        default = getattr(rule, name)
        for value in values:
            setattr(rule, name, value)
            try:
                row = {"constant": name, "value": value, "default": default}
                for case, (image, lungs, truth) in cases.items():
                    lesions = sitk.GetArrayFromImage(rule.find_lesions(image, lungs)) > 0
                    lung_slices = (sitk.GetArrayViewFromImage(lungs) > 0).any(axis=(1, 2))
                    row[case] = scores(slice_positive(lesions, image.GetSpacing()), truth, lung_slices)
                rows.append(row)
            finally:
                setattr(rule, name, default)
    return rows


_CHILD = """
import json, os, threading, time
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
from CovidCTAnalysisLib.threshold.lesions import threshold_labelmap
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
image = sitk.ReadImage({path!r})
base = rss()
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
labels = threshold_labelmap(image)
took = time.perf_counter() - t0
done.set()
thread.join()
peak[0] = max(peak[0], rss())
print(json.dumps({{"seconds": took, "peak_rss_gb": peak[0] / 1e9, "rss_after_load_gb": base / 1e9}}))
"""


def time_large_phantom(size=(512, 512, 300), spacing=(0.7, 0.7, 1.5)) -> dict:
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    with tempfile.TemporaryDirectory(prefix="covidct-threshold-bench-") as tmp:
        path = Path(tmp) / "phantom.nii"
        ph = make_phantom("covid", seed=1, size=size, spacing=spacing)
        sitk.WriteImage(ph.image, str(path))
        del ph
        code = _CHILD.format(path=str(path))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["above_load_gb"] = res["peak_rss_gb"] - res["rss_after_load_gb"]
    res = {k: round(v, 2) for k, v in res.items()}
    res.update(size=list(size), spacing_mm=list(spacing), target_seconds=TARGET_S, target_gb_above_load=TARGET_GB)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-timing", action="store_true", help="skip the 512x512x300 timing run")
    parser.add_argument(
        "--robustness", action="store_true", help="also rerun the slice scores with each rule constant moved"
    )
    args = parser.parse_args(argv)
    result: dict = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if SHARED_DATA.is_dir():
        labels = json.loads((SHARED_DATA / "covid-ct-md" / "labels.json").read_text())["cases"]
        kept: dict = {}
        result["cases"] = {case: evaluate_case(SHARED_DATA, case, info, kept) for case, info in labels.items()}
        RESULTS.mkdir(parents=True, exist_ok=True)
        save_figure(kept, RESULTS / "eval_threshold_slices.png")
        print(f"wrote {RESULTS / 'eval_threshold_slices.png'}")
        print(f"{'case':10} {'method':10} {'sens':>6} {'spec':>6} {'(lung)':>7} {'pos':>5}/{'n':<4} lesion mL")
        for case, res in result["cases"].items():
            for method in ("threshold", "naive_band"):
                if method in res:
                    s = res[method]
                    print(
                        f"{case:10} {method:10} {s['sensitivity']:6.2f} {s['specificity']:6.2f} "
                        f"{s['specificity_lung_slices']:7.2f} {s['positive_slices']:5}/{res['n_slices']:<4} "
                        f"{res['lesion_ml'] if method == 'threshold' else ''}"
                    )
            print(f"{case:10} lungs L {res['left_ml']:.0f} mL R {res['right_ml']:.0f} mL, lesion {res['lesion_ml']} mL")
        result["p001_dicom"] = evaluate_dicom_p001(SHARED_DATA, labels["P001"]["slice_infection_label_by_nifti_z"])
        result["example_ct"] = evaluate_example_ct(SHARED_DATA)
        result["lidc"] = evaluate_lidc(SHARED_DATA)
        for key in ("p001_dicom", "example_ct", "lidc"):
            print(f"{key}: {result[key]}")
        if args.robustness:
            result["robustness"] = robustness(SHARED_DATA, labels)
            for row in result["robustness"]:
                cells = "  ".join(
                    f"{c} sens {row[c]['sensitivity']:.2f} spec {row[c]['specificity']:.2f}" for c in ("P001", "cap001")
                )
                print(f"{row['constant']:>18} = {row['value']:>7} (default {row['default']:>7}): {cells}")
    else:
        print(f"{SHARED_DATA} is absent: real-data evaluation skipped")
    if not args.skip_timing:
        result["timing_512x512x300"] = time_large_phantom()
        print(f"timing_512x512x300: {result['timing_512x512x300']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "eval_threshold_slices.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
