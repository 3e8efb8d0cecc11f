"""Leave-one-patient-out (LOPO) evaluation of the demo recipe on the real CTs of ``../shared/data`` (issue 10).

For each real patient of the COVID-CT-MD sample (P001 COVID-19, cap001 CAP, normal001 Normal):

1. train the demo classifier and segmenter with that patient left out (``--real-exclude <patient>``), with
   ``make demo``'s own recipe and seeds (``training.demo.training_args`` + ``train_and_export``), and install them
   in a registry of the fold's own (``<work>/lopo/<patient>/models``);
2. run ``covidct analyze --segment always --method model`` with those models on the patient's NIfTI
   (``covid-ct-md/nifti/*_256.nii.gz``, the files the hybrids are made from); record the class and probabilities,
   lesion % of lung (left, right, total), lesion-slice sensitivity and specificity against the radiologists'
   slice labels (a slice is positive at >= 50 mm3 of lesion: ``eval_threshold_slices.slice_positive``/``scores``)
   and the report's plausibility ``warnings``;
3. the same numbers for ``--method threshold`` on the same scan, for comparison.

The models trained on all three patients (the installed demo models, or ``--all-models-dir``) are evaluated on
each patient too; those rows are marked ``seen`` (or ``not seen`` when the installed models were trained on
phantoms only). Each model row is checked against the issue's aims (normal001: <= 3 % lesion and not Pneumonia or
COVID-19 with p >= 0.9; P001: slice sensitivity >= 0.8 at specificity >= 0.7; cap001: not COVID-19).

    python -m benchmarks.eval_real_lopo [--folds P001,cap001] [--reuse] [--quick] [--threads 1]
    python -m benchmarks.eval_real_lopo --seen-only [--all-models-dir DIR]   # no folds: the installed models only

Results: ``benchmarks/results/eval_real_lopo.json``, ``eval_real_lopo.md`` (the table) and ``eval_real_lopo.png``
(per patient: one axial slice with the unseen model's segmentation; slice labels against the predicted positive
slices). ``--quick`` trains tiny models (a smoke test: the numbers mean nothing and the files say QUICK).
Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.files import write_json, write_text

from benchmarks.eval_threshold_slices import RESULTS, scores, slice_positive
from training.demo import (
    CLASSIFIER_ID,
    DEMO_VERSION,
    EVAL_SEEDS,
    QUICK,
    QUICK_VERSION,
    SEGMENTER_ID,
    Steps,
    check_real_data,
    default_real_data,
    installed,
    train_and_export,
    training_args,
)
from training.real_cases import REAL_PATIENTS, RealCase, covid_ct_md_sample, parse_patients

DISEASE = ("Pneumonia", "COVID-19")
LABELMAP = "labelmap.nii.gz"


def check_aims(row: dict) -> list[dict]:
    """The issue's aims for a model row of this patient: [{"aim", "met"}] (empty for threshold rows)."""
    if row["method"] != "model":
        return []
    label, probs = row.get("class"), row.get("probabilities") or {}
    p = probs.get(label)
    if row["patient"] == "normal001":
        total = (row.get("lesion_percent") or {}).get("total")
        confident = label in DISEASE and p is not None and p >= 0.9
        return [{"aim": "lesion <= 3 % of lung", "met": total is not None and total <= 3.0},
                {"aim": "not Pneumonia/COVID-19 with p >= 0.9", "met": label is not None and not confident}]
    if row["patient"] == "P001":
        s = row.get("slices") or {}
        sens, spec = s.get("sensitivity"), s.get("specificity")
        return [{"aim": "slice sensitivity >= 0.8 at specificity >= 0.7",
                 "met": sens is not None and spec is not None and sens >= 0.8 and spec >= 0.7}]
    if row["patient"] == "cap001":
        return [{"aim": "not called COVID-19", "met": label is not None and label != "COVID-19"}]
    return []


def analyze(image: Path, out: Path, method: str, models_dir: Path | None, version: str) -> tuple[dict, np.ndarray]:
    """``covidct analyze --segment always`` into ``out``: (report.json, labelmap array (z, y, x))."""
    import json

    from CovidCTAnalysisLib.cli.main import main as covidct

    argv = ["analyze", str(image), "--output-dir", str(out), "--force", "--segment", "always", "--method", method,
            "--device", "cpu", "--progress", "none"]
    if method == "model":
        argv += ["--models-dir", str(models_dir), "--classifier", f"{CLASSIFIER_ID}@{version}",
                 "--segmenter", f"{SEGMENTER_ID}@{version}"]
    rc = covidct(argv)
    if rc != 0:
        raise RuntimeError(f"covidct analyze ({method}) on {image} exited {rc}; see the messages above")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LABELMAP)))
    return json.loads((out / "report.json").read_text()), labels


def score_row(case: RealCase, models: str, method: str, report: dict, labels: np.ndarray,
              spacing: tuple[float, float, float]) -> dict:
    """One table row: class, lesion %, slice scores against the radiologists' labels, warnings."""
    truth = np.asarray(case.labels_or_clear(labels.shape[0]), dtype=bool)
    positive = slice_positive(labels == 3, spacing)
    slices = scores(positive, truth, (labels > 0).any(axis=(1, 2)))
    if not truth.any():  # normal001: no infection slice, so no sensitivity to measure
        slices["sensitivity"] = None
    cls = report.get("classification") or {}
    row = {"patient": case.patient, "truth": case.class_name, "models": models, "method": method,
           "class": cls.get("label"), "probabilities": cls.get("probabilities"),
           "lesion_percent": {k: (report.get("statistics", {}).get("lesion_percent") or {}).get(k)
                              for k in ("left", "right", "total")},
           "slices": slices, "n_truth_positive_slices": int(truth.sum()), "n_slices": int(truth.size),
           "warnings": report.get("warnings") or [],
           "model_ids": [f"{m.get('id')}@{m.get('version')}" for m in report.get("models") or []]}
    row["aims"] = check_aims(row)
    return row


def train_fold(patient: str, real_data: Path, work: Path, cache: Path, quick: bool, reuse: bool,
               threads: int) -> Path:
    """Train and install the fold's classifier and segmenter (``patient`` left out); returns the registry root."""
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    fold = work / "lopo" / patient
    registry = ModelRegistry(fold / "models")
    version = QUICK_VERSION if quick else DEMO_VERSION
    ids = {"classifier": CLASSIFIER_ID, "segmenter": SEGMENTER_ID}
    kinds = [k for k, mid in ids.items() if not (reuse and installed(registry, mid, version) is not None)]
    if not kinds:
        print(f"==> LOPO {patient}: reusing the fold's models in {registry.root}", flush=True)
        return registry.root
    steps = Steps(total=sum(6 if k == "classifier" else 5 for k in kinds))
    print(f"==> LOPO {patient}: training the demo {' and '.join(kinds)} without {patient} in {fold}"
          + (" (reusing the installed " + ", ".join(k for k in ids if k not in kinds) + ")" if len(kinds) < 2 else ""),
          flush=True)
    for kind in kinds:
        run_args = training_args(kind, real_data, [patient], quick) + ["--threads", str(threads)]
        train_and_export(kind, fold / f"{kind}-model", steps, fold, cache, run_args,
                         QUICK["eval_seeds"] if quick else EVAL_SEEDS, version, real_data=real_data,
                         real_exclude=[patient])
        registry.install(fold / f"{kind}-model", force=True)
    steps.finish()
    return registry.root


def seen_label(models_dir: Path, patient: str) -> str | None:
    """``seen`` when the installed demo models trained on ``patient``, ``not seen`` when not; None: none installed."""
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    metas = [installed(registry, mid, DEMO_VERSION) for mid in (CLASSIFIER_ID, SEGMENTER_ID)]
    if any(m is None for m in metas):
        return None
    saw = [patient in ((m.raw.get("training_data") or {}).get("mix") or {}).get("real_patients", []) for m in metas]
    return "seen" if all(saw) else "not seen (all-data models without this patient)"


def _num(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[dict], quick: bool) -> str:
    head = ("QUICK smoke run (tiny settings): these numbers say nothing about the models.\n\n" if quick else "")
    lines = [head + "| patient (truth) | models | method | class (p) | lesion % L / R / total | slice sens / spec | "
             "plausibility warnings | aims |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = (r["probabilities"] or {}).get(r["class"]) if r["class"] else None
        cls = f"{r['class']} ({_num(p)})" if r["class"] else "–"
        lp, s = r["lesion_percent"], r["slices"]
        aims = "; ".join(f"{a['aim']}: {'met' if a['met'] else 'MISSED'}" for a in r["aims"]) or "–"
        lines.append(f"| {r['patient']} ({r['truth']}) | {r['models']} | {r['method']} | {cls} | "
                     f"{_num(lp['left'], 1)} / {_num(lp['right'], 1)} / {_num(lp['total'], 1)} | "
                     f"{_num(s['sensitivity'])} / {_num(s['specificity'])} | {len(r['warnings'])} | {aims} |")
    return "\n".join(lines) + "\n"


def save_figure(kept: dict, path: Path, quick: bool) -> None:
    """Per patient: the unseen model's segmentation on one axial slice, and the slice strips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kept), 2, figsize=(15, 4.6 * len(kept)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.2]})
    for (ax_img, ax_strip), (patient, k) in zip(axes, kept.items(), strict=True):
        labels, hu = k["labels"], k["hu"]
        lesion_per_z = (labels == 3).sum(axis=(1, 2))
        lung_z = np.nonzero((labels > 0).any(axis=(1, 2)))[0]
        z = int(np.argmax(lesion_per_z)) if lesion_per_z.any() else int(lung_z[len(lung_z) // 2]) if len(lung_z) \
            else labels.shape[0] // 2
        ax_img.imshow(hu[z], cmap="gray", vmin=-1200, vmax=200)
        for value, colour in ((1, "y"), (2, "c"), (3, "r")):
            if (labels[z] == value).any():
                ax_img.contour(labels[z] == value, [0.5], colors=colour, linewidths=0.8)
        ax_img.set_title(f"{patient}: z={z}, {k['shown']} (left y, right c, lesion r)")
        ax_img.axis("off")
        names = list(k["strips"])
        ax_strip.imshow(np.stack([k["strips"][n] for n in names]).astype(float), aspect="auto", cmap="Reds",
                        interpolation="nearest", vmin=0, vmax=1)
        ax_strip.set_yticks(range(len(names)), names)
        ax_strip.axvline(z, color="b", linewidth=0.8)
        ax_strip.set_xlabel("slice z (0 = inferior); blue: the slice shown")
        ax_strip.set_title(f"{patient}: slices with lesion (>= 50 mm3)")
    unseen = any(k["shown"] == "unseen model" for k in kept.values())
    what = ("leave-one-patient-out: demo models on real CTs they never saw" if unseen else
            "demo models trained on these patients (seen), on their real CTs")
    fig.suptitle(("QUICK smoke run: " if quick else "") + what + " (research use, not for diagnosis)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_real_lopo", description=__doc__.splitlines()[0])
    p.add_argument("--real-data", type=Path, default=None, help="shared-data root (default as make demo's)")
    p.add_argument("--folds", default=",".join(REAL_PATIENTS), help="patients to leave out, e.g. P001")
    p.add_argument("--reuse", action="store_true", help="skip training a fold's classifier or segmenter when it is installed (retrain one: uninstall it)")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test, not the benchmark")
    p.add_argument("--all-models-dir", type=Path, default=None,
                   help="registry of the demo models trained on all patients (default: where covidct looks)")
    p.add_argument("--skip-seen", action="store_true", help="do not evaluate the all-patients models")
    p.add_argument("--seen-only", action="store_true",
                   help="train no folds: evaluate only the all-patients models (and the threshold method)")
    p.add_argument("--work-dir", type=Path, default=None, help="default $COVIDCT_DEMO_DIR or <repo>/.demo")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the json/md/png go")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    from training.common import REPO_ROOT

    torch.set_num_threads(args.threads)
    if args.seen_only and args.skip_seen:
        raise SystemExit("--seen-only and --skip-seen leave nothing to evaluate; give one of them")
    all_dir = args.all_models_dir or _default_models_dir()
    if args.seen_only and any(installed(ModelRegistry(all_dir), mid, DEMO_VERSION) is None
                              for mid in (CLASSIFIER_ID, SEGMENTER_ID)):
        raise SystemExit(f"--seen-only: no demo models {DEMO_VERSION} installed in {all_dir} "
                         "(run make demo, or give --all-models-dir)")
    real_data = check_real_data(args.real_data or default_real_data())
    if real_data is None:  # make bench on a machine without ../shared/data
        print("eval_real_lopo: skipped, no real CTs (give --real-data DIR: the shared-data root with "
              "covid-ct-md/labels.json)", flush=True)
        return 0
    folds = parse_patients(args.folds)
    if not folds:
        raise SystemExit(f"--folds {args.folds!r}: expected some of {list(REAL_PATIENTS)}")
    work = (args.work_dir or Path(os.environ.get("COVIDCT_DEMO_DIR") or REPO_ROOT / ".demo")).resolve()
    cache, t0 = work / "phantom-cache", time.monotonic()
    version = QUICK_VERSION if args.quick else DEMO_VERSION
    rows, kept = [], {}
    for case in covid_ct_md_sample(real_data):
        if case.patient not in folds:
            continue
        image = sitk.ReadImage(str(case.image_path))
        spacing, fold = image.GetSpacing(), work / "lopo" / case.patient
        shown = None  # (name, labelmap) of the segmentation the figure draws
        if not args.seen_only:
            models_dir = train_fold(case.patient, real_data, work, cache, args.quick, args.reuse, args.threads)
            report, labels = analyze(case.image_path, fold / "analysis-unseen", "model", models_dir, version)
            rows.append(score_row(case, "unseen", "model", report, labels, spacing))
            shown = ("unseen model", labels)
        thr_report, thr_labels = analyze(case.image_path, fold / "analysis-threshold", "threshold", None, version)
        rows.append(score_row(case, "–", "threshold", thr_report, thr_labels, spacing))
        truth = np.asarray(case.labels_or_clear(thr_labels.shape[0]), dtype=bool)
        strips = {"radiologists": truth, "threshold": slice_positive(thr_labels == 3, spacing)}
        if shown is not None:
            strips["unseen model"] = slice_positive(shown[1] == 3, spacing)
        seen = None if args.skip_seen else seen_label(all_dir, case.patient)
        if seen is not None:
            seen_report, seen_labels = analyze(case.image_path, fold / "analysis-seen", "model", all_dir, DEMO_VERSION)
            rows.append(score_row(case, seen, "model", seen_report, seen_labels, spacing))
            strips["all-data model"] = slice_positive(seen_labels == 3, spacing)
            shown = shown or ("all-data model", seen_labels)
        elif not args.skip_seen:
            print(f"==> {case.patient}: no demo models {DEMO_VERSION} installed in the all-data registry; "
                  "its rows are left out (run make demo, or give --all-models-dir)", flush=True)
        shown = shown or ("threshold", thr_labels)
        kept[case.patient] = {"hu": sitk.GetArrayFromImage(image), "labels": shown[1], "shown": shown[0],
                              "strips": strips}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    met = [a for r in rows for a in r["aims"]]
    result = {"quick": args.quick, "protocol": "leave one patient out: each fold's models never saw its patient; "
              "demo recipe (training.demo.training_args), same seeds; a slice is positive at >= 50 mm3 of lesion",
              "real_data": str(real_data), "folds": sorted(folds), "threads": args.threads,
              "seconds": round(time.monotonic() - t0, 1), "aims_met": sum(a["met"] for a in met),
              "aims_checked": len(met), "rows": rows, "intended_use": "Research use, not for diagnosis."}
    write_json(out / "eval_real_lopo.json", result)
    write_text(out / "eval_real_lopo.md", markdown(rows, args.quick))
    save_figure(kept, out / "eval_real_lopo.png", args.quick)
    print(markdown(rows, args.quick), flush=True)
    for r in rows:
        for a in r["aims"]:
            print(f"{r['patient']} ({r['models']} models): {a['aim']}: {'met' if a['met'] else 'missed'}", flush=True)
    print(f"wrote {out / 'eval_real_lopo.json'}, .md and .png ({result['seconds']:.0f} s)", flush=True)
    return 0


def _default_models_dir() -> Path:
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    return ModelRegistry(None).root


if __name__ == "__main__":
    raise SystemExit(main())
