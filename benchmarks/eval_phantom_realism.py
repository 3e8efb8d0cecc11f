"""How close the phantoms come to real chest CT: lung HU, noise level and texture, vessel density.

Per scan, inside the threshold lungs: lung HU percentiles and noise SD (``results.plausibility.input_profile``);
noise texture as the ratio of the robust SD of in-plane neighbour differences at lag 2 to lag 1 (1.0 for white
noise; above 1 for noise correlated over neighbouring voxels, as a reconstruction kernel makes it); vessel
density as the share of lung voxels above -500 HU after a 1-voxel in-plane median (vessels, and lesions where
there are any). Phantoms: normal, seeds ``--seeds`` on their own grids; real: COVID-CT-MD normal001 (the
2x2-averaged 256 NIfTI, which halves the noise) and P001 at full resolution (DICOM; it holds lesions).

    python -m benchmarks.eval_phantom_realism [--seeds 0-2]

Writes ``benchmarks/results/eval_phantom_realism.json`` (with the ``PHANTOM_VERSION`` measured; when the file
there was written for another version, its rows are kept under ``before``, version and all, for the comparison)
and prints one row per scan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.phantom.generator import PHANTOM_VERSION, make_phantom
from CovidCTAnalysisLib.results.plausibility import input_profile
from CovidCTAnalysisLib.threshold.lungs import segment_lungs
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def _robust_sd(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def realism(image: sitk.Image) -> dict:
    lungs = segment_lungs(image)
    out = input_profile(image, lungs)
    hu = sitk.GetArrayViewFromImage(image).astype(np.float32)
    lung = ndi.binary_erosion(sitk.GetArrayViewFromImage(lungs) > 0, iterations=2)
    lags = []
    for lag in (1, 2):
        both = lung[:, :, lag:] & lung[:, :, :-lag]
        lags.append(_robust_sd((hu[:, :, lag:] - hu[:, :, :-lag])[both]))
    out["noise_lag2_over_lag1"] = round(lags[1] / max(lags[0], 1e-6), 3)
    smooth = ndi.median_filter(hu, size=(1, 3, 3))
    out["vessel_share_pct"] = round(100.0 * float(np.mean(smooth[lung] > -500.0)), 2)
    out["spacing_mm"] = [round(s, 3) for s in image.GetSpacing()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-2")
    args = p.parse_args(argv)
    lo, _, hi = args.seeds.partition("-")
    rows = {f"phantom-normal-{s}": realism(make_phantom("normal", s).image) for s in range(int(lo), int(hi or lo) + 1)}
    if SHARED_DATA.is_dir():
        from CovidCTAnalysisLib.loading.load import load_ct

        folder = SHARED_DATA / "covid-ct-md"
        rows["normal001 (256 NIfTI)"] = realism(sitk.ReadImage(str(folder / "nifti" / "normal001_256.nii.gz")))
        rows["P001 (DICOM, lesions)"] = realism(load_ct(folder / "dicom" / "P001").image)
    keys = ("lung_hu_p5", "lung_hu_p50", "lung_hu_p95", "noise_hu", "noise_lag2_over_lag1", "vessel_share_pct")
    print(f"{'scan':24}" + "".join(f"{k:>22}" for k in keys))
    for name, row in rows.items():
        print(f"{name:24}" + "".join(f"{row[k]:>22}" for k in keys))
    out = HERE / "results" / "eval_phantom_realism.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"phantom_version": PHANTOM_VERSION, "rows": rows}
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if previous and "rows" not in previous:  # written before the version was recorded (generator 8 or older)
        previous = {"phantom_version": None, "rows": previous}
    if previous and previous.get("phantom_version") != PHANTOM_VERSION:
        result["before"] = {"phantom_version": previous.get("phantom_version"), "rows": previous.get("rows")}
    elif "before" in previous:
        result["before"] = previous["before"]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
