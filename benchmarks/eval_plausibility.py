"""How often the plausibility guard (``results/plausibility.py``) fires, on unseen phantoms and on the real CTs.

No trained model is needed; each check is measured in the form that can be measured here:

* **Out of distribution**: the ``input_profile`` range of the phantoms a demo model trains on
  (``--train-seeds``, all three kinds, their own grids, as ``make demo`` makes them) against
  unseen phantom seeds (``--eval-seeds``) and the real CTs of ``../shared/data/covid-ct-md``.
* **Class against lesion burden**, with the *true* class at p = 0.95 and the threshold method's
  lesion percent: how often the check would fire on a classifier that is right.
* **Lesion disagreement**, with the phantom's truth lesion standing in for a perfect segmenter
  against the threshold method's candidates (phantoms only; the real CTs have no voxel truth).

    python -m benchmarks.eval_plausibility [--train-seeds 0-3] [--eval-seeds 100-104]

Writes ``benchmarks/results/eval_plausibility.json`` and prints the firing rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.results import plausibility as guard
from CovidCTAnalysisLib.threshold.lesions import find_lesions
from CovidCTAnalysisLib.threshold.lungs import segment_lungs

HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
KIND_CLASS = {"normal": "Normal", "pneumonia": "Pneumonia", "covid": "COVID-19"}
REAL_CLASS = {"P001": "COVID-19", "cap001": "Pneumonia", "normal001": "Normal"}
TRUE_CLASS_P = 0.95


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _checks(image: sitk.Image, lungs: sitk.Image, label: str, seen: dict, truth_lesion_ml: float | None) -> dict:
    profile = guard.input_profile(image, lungs)
    threshold_ml = guard.lesion_ml(find_lesions(image, lungs), value=1)  # a 0/1 mask
    pct = 100.0 * threshold_ml / max(profile["lung_ml"], 1e-6)
    out = {"profile": profile, "threshold_lesion_ml": round(threshold_ml, 1), "threshold_lesion_pct": round(pct, 2),
           "ood": guard.out_of_distribution(profile, seen, "phantom-trained model"),
           "class_burden": guard.class_burden_conflict(label, TRUE_CLASS_P, {"threshold method": pct})}
    if truth_lesion_ml is not None:
        out["truth_lesion_ml"] = round(truth_lesion_ml, 1)
        out["disagreement"] = guard.lesion_disagreement(truth_lesion_ml, threshold_ml)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-seeds", default="0-3")
    p.add_argument("--eval-seeds", default="100-104")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    train = []
    for seed in _seeds(args.train_seeds):
        for kind in KIND_CLASS:
            ph = make_phantom(kind, seed)
            train.append(guard.input_profile(ph.image, segment_lungs(ph.image)))
            print(f"train {kind} {seed}: {train[-1]}", flush=True)
    seen = guard.profile_range(train)
    rows = {}
    for seed in _seeds(args.eval_seeds):
        for kind, label in KIND_CLASS.items():
            ph = make_phantom(kind, seed)
            truth_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(ph.truth) == LESION)) * float(
                np.prod(ph.image.GetSpacing())) / 1000.0
            rows[f"phantom-{kind}-{seed}"] = _checks(ph.image, segment_lungs(ph.image), label, seen, truth_ml)
            print(f"phantom {kind} {seed}: {rows[f'phantom-{kind}-{seed}']}", flush=True)
    real = {}
    if SHARED_DATA.is_dir():
        labels = json.loads((SHARED_DATA / "covid-ct-md" / "labels.json").read_text())["cases"]
        for case, info in labels.items():
            image = sitk.ReadImage(str(SHARED_DATA / "covid-ct-md" / info["file"]))
            real[case] = _checks(image, segment_lungs(image), REAL_CLASS[case], seen, None)
            print(f"real {case}: {real[case]}", flush=True)

    def rate(group: dict, key: str) -> str:
        have = [r for r in group.values() if key in r]
        return f"{sum(bool(r[key]) for r in have)}/{len(have)}" if have else "n/a"

    summary = {name: {key: rate(group, key) for key in ("ood", "class_burden", "disagreement")}
               for name, group in (("phantoms", rows), ("real", real))}
    summary.update({f"real {case}": {k: bool(r[k]) for k in ("ood", "class_burden")} for case, r in real.items()})
    result = {"train_seeds": args.train_seeds, "eval_seeds": args.eval_seeds, "training_range": seen,
              "summary": summary, "phantoms": rows, "real": real, "seconds": round(time.perf_counter() - t0, 1)}
    out = HERE / "results" / "eval_plausibility.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in summary.items():
        print(f"{name:18} fired: {s}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
