"""Evaluate a model folder through the core's own inference and record the metrics in it.

    python -m training.evaluate --model-dir out/model --dataset phantoms --phantom-seeds 100-109
    python -m training.evaluate --model-dir out/model --dataset covid-ct-md --data-root D --held-out

Each case runs exactly as ``covidct analyze`` runs it: the core's HU-threshold lungs and
``lung_extent``, then ``classify.classify`` or ``segment.segment`` with the model loaded
(sha256-checked) by ``model_folder.load_model_folder``.

Classifier: patient-level accuracy, per-class sensitivity and specificity, confusion
matrix and one-vs-rest AUC (2-D image datasets: the slice probabilities of a patient are
aggregated with the core's ``classify.aggregate``, by the model's rule).
Segmenter: per-class Dice as mean ± std over cases (the paper's MeanDice±Std) and HD95
(mm), on the input grid. ``--held-out`` keeps only the model's recorded validation split
(patients the model never trained on). The results are written into the model folder's
``metadata.json`` under ``eval_metrics`` (the weights and their sha256 are unchanged).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.loading.load import load_ct
from CovidCTAnalysisLib.models.folder import check_model_folder, load_model_folder, segmentation_channel_labels
from CovidCTAnalysisLib.models.metadata import METADATA_FILE

from training import classifier_data as cdata
from training import segmenter_data as sdata
from training.common import resolve_device, write_json
from training.metrics import classification_metrics, dice_hd95, summarise
from training.progress import progress_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="model folder (metadata.json + model.safetensors)")
    p.add_argument("--dataset", required=True,
                   choices=["phantoms", "folders", "covid-ct-md", "nifti-csv", "covid-ct-seg", "covid-19-20"])
    p.add_argument("--data-root")
    p.add_argument("--csv")
    p.add_argument("--class-folders")
    p.add_argument("--patient-regex", default=cdata.DEFAULT_PATIENT_REGEX)
    p.add_argument("--layout", default="auto", choices=["auto", "zenodo", "kaggle"])
    p.add_argument("--mask-kind", default=None, choices=sorted(sdata.CHANNEL_NAMES),
                   help="covid-ct-seg masks (default: what the model's labels need)")
    p.add_argument("--phantom-kinds", default="normal,pneumonia,covid")
    p.add_argument("--phantom-seeds", default="100-109", help="use seeds the model never saw")
    p.add_argument("--phantom-spacing", type=float, default=None)
    p.add_argument("--cache-dir", help="phantom cache (default <model-dir>/../cache)")
    p.add_argument("--held-out", action="store_true", help="only the model's recorded validation patients")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="print the metrics, leave metadata.json as it is")
    return p


def _log(msg: str, t0: float) -> None:
    progress_line("evaluate", msg, t0)


def _held_out(meta_raw: dict) -> set[str]:
    split = (meta_raw.get("training_data") or {}).get("split") or {}
    if not split.get("val"):
        raise SystemExit("--held-out: the model's metadata records no validation split (training_data.split.val)")
    return set(split["val"])


def evaluate_classifier(model, cases: list[cdata.ClassifierCase], device, t0: float) -> dict:
    """Patient-level metrics through ``classify.classify`` (volumes) or ``classify.aggregate`` (2-D)."""
    import torch
    from CovidCTAnalysisLib.inference.classify import aggregate, classify
    from CovidCTAnalysisLib.models.transforms import classifier_settings
    from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

    from training.classifier_slices import image_slices

    meta = model.metadata
    names = [str(c) for c in meta.labels]
    prep = classifier_settings(meta.preprocessing)
    y, probs, per_case = [], [], []
    for i, case in enumerate(cases):
        if case.is_volume:
            image = load_ct(case.image).image
            res = classify(image, lung_extent(segment_lungs(image)), model, device)
            p = np.array([res.probabilities[c] for c in names])
            n = res.n_slices
        else:
            xs = image_slices(case, prep).x
            with torch.inference_mode():
                from CovidCTAnalysisLib.models.transforms import classifier_normalize

                sp = torch.softmax(model.module(classifier_normalize(xs, prep).to(device)), 1).cpu().numpy()
            p, n = aggregate(sp, names, prep["aggregation"]), len(xs)
        y.append(case.class_index)
        probs.append(p)
        per_case.append({"patient_id": case.patient_id, "true": names[case.class_index],
                         "predicted": names[int(np.argmax(p))], "probabilities": [round(float(v), 4) for v in p],
                         "slices": int(n)})
        _log(f"{i + 1}/{len(cases)} {case.patient_id}: true {names[case.class_index]}, predicted "
             f"{names[int(np.argmax(p))]}", t0)
    m = classification_metrics(y, np.array(probs), names)
    m["level"] = "patient"
    m["aggregation"] = prep["aggregation"]
    m["cases"] = per_case
    return m


def evaluate_segmenter(model, cases: list[sdata.SegCase], device, t0: float, sides: str = "warn") -> dict:
    """Per-class Dice (mean ± std) and HD95 through ``segment.segment`` on the input grid, with the rib cage,
    diaphragm and threshold lungs the analysis uses (so the numbers are those of ``covidct analyze``)."""
    from CovidCTAnalysisLib.inference.segment import segment
    from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs
    from CovidCTAnalysisLib.threshold.rib_cage import lesion_bounds

    meta = model.metadata
    chan = segmentation_channel_labels(meta)  # model channel -> our label value
    n_labels = len(chan)
    lut = np.zeros(max(n_labels, 4), dtype=np.uint8)
    for c, v in chan.items():
        lut[c] = v
    names = {v: str(meta.labels[str(c)]) for c, v in chan.items() if v != 0}
    per_case = []
    for i, case in enumerate(cases):
        image = sdata.read_image_hu(case)
        truth = lut[sitk.GetArrayFromImage(sdata.read_label(case, n_labels, sides))]
        lungs = segment_lungs(image)
        bounds = lesion_bounds(image, lungs)
        pred = sitk.GetArrayFromImage(segment(image, lung_extent(lungs), model, device, rib_cage=bounds.rib_cage,
                                              below_diaphragm=bounds.below_diaphragm))
        sx, sy, sz = image.GetSpacing()
        res = dice_hd95(pred, truth, sorted(names), (sz, sy, sx))
        per_case.append(res)
        _log(f"{i + 1}/{len(cases)} {case.case_id}: " + ", ".join(
            f"{names[k]} Dice {v['dice']:.3f}" for k, v in res.items() if v["truth_voxels"]), t0)
    out = {"per_class": summarise(per_case, names), "n_cases": len(cases), "grid": "input image grid",
           "cases": [{"case_id": c.case_id, **{names[k]: {kk: (round(vv, 4) if isinstance(vv, float) else vv)
                                                         for kk, vv in v.items()} for k, v in r.items()}}
                     for c, r in zip(cases, per_case, strict=True)]}
    return out


def load_eval_cases(args, meta_raw: dict, t0: float):
    task = meta_raw["task"]
    cache = Path(args.cache_dir or Path(args.model_dir).resolve().parent / "cache")

    def log(step: str, msg: str) -> None:
        _log(msg, t0)

    # The trainers' dataset loaders also read their real-data options (hybrids, weak); evaluation has no real part.
    ns = SimpleNamespace(**{"real_data": None, "real_exclude": "", **vars(args), "output_dir": str(cache.parent),
                            "cache_dir": str(cache), "lung_mask": "threshold", "max_slices_per_case": None})
    if task == "classification":
        from training.train_classifier import load_cases

        if args.dataset in ("covid-ct-seg", "covid-19-20"):
            raise SystemExit(f"--dataset {args.dataset} has no classes; a classifier needs a classification dataset")
        cases, desc = load_cases(ns, log)
        ids = [c.patient_id for c in cases]
    else:
        from training.train_segmenter import load_cases

        if args.dataset not in ("covid-ct-seg", "covid-19-20", "phantoms"):
            raise SystemExit(f"--dataset {args.dataset} has no voxel labels; a segmenter needs covid-ct-seg, "
                             "covid-19-20 or phantoms")
        n = len(meta_raw["labels"])
        ns.mask_kind = args.mask_kind or {4: "lung_and_infection", 3: "lung", 2: "infection"}[n]
        cases, desc, _ = load_cases(ns, log)
        ids = [c.case_id for c in cases]
    if args.held_out:
        keep = _held_out(meta_raw)
        cases = [c for c, i in zip(cases, ids, strict=True) if i in keep]
        if not cases:
            raise SystemExit("--held-out: none of the dataset's cases is in the model's validation split")
    return cases, desc


def open_model_dir(args) -> tuple[Path, dict]:
    """Apply ``--threads``; the checked ``--model-dir`` and its metadata.json as written (also for
    ``tune_aggregation``, which edits it)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    check_model_folder(model_dir)
    return model_dir, json.loads((model_dir / METADATA_FILE).read_text())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.monotonic()
    model_dir, meta_raw = open_model_dir(args)
    device = resolve_device(args.device)
    model = load_model_folder(model_dir, device)
    cases, desc = load_eval_cases(args, meta_raw, t0)
    _log(f"{len(cases)} cases of {desc.get('name')}", t0)
    if meta_raw["task"] == "classification":
        metrics = evaluate_classifier(model, cases, device, t0)
        headline = f"accuracy {metrics['accuracy']:.3f} over {metrics['n']} patients"
    else:
        metrics = evaluate_segmenter(model, cases, device, t0)
        headline = "; ".join(f"{k} Dice {v['dice_text']} %" for k, v in metrics["per_class"].items())
    metrics.update({"dataset": desc, "held_out_only": bool(args.held_out), "measured_by": "training/evaluate.py",
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "seconds": round(time.monotonic() - t0, 1)})
    _log(headline, t0)
    if not args.no_write:
        write_eval_metrics(model_dir, metrics)
        _log(f"recorded in {model_dir / METADATA_FILE}", t0)
    return 0


def write_eval_metrics(model_dir: Path, metrics: dict) -> None:
    """Put ``metrics`` into ``metadata.json`` (atomically) and re-check the folder."""
    path = Path(model_dir) / METADATA_FILE
    raw = json.loads(path.read_text())
    raw["eval_metrics"] = metrics
    write_json(path, raw)
    check_model_folder(model_dir)


if __name__ == "__main__":
    raise SystemExit(main())
