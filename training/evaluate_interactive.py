"""Robot-user evaluation of an interactive model, written into its ``metadata.json`` and drawn as a PNG.

    python -m training.evaluate_interactive --model-dir out/model-int --phantom-seeds 100-104

For every case and each start, a robot clicks the centre of the largest error region (the core's
``interactive.simulate.next_click``: positive on a missed region, negative on a false one), up to
``--max-clicks``, each click applied by the core's ``Refiner`` exactly as ``covidct refine`` applies it
(ROI, guidance, merge rule) on the case's own grid. Starts:

- ``empty``: the true lungs without any lesion;
- ``automatic``: the true lungs with an automatic method's lesions inside them: the segmenter's
  (``--automatic-model``, a segmentation model folder, run through ``inference.segment.segment`` as
  ``covidct analyze`` runs it) or, without one, the threshold method's (``threshold.lesions.find_lesions``
  on the true lungs). The metrics say which (``automatic_start``). The true lungs are kept so that the
  robot's positive clicks on missed lesion are never refused as outside the lungs.

Reported per start: mean lesion Dice after 0, 1, 3, 5, 10 clicks (and the whole curve), NoC@85 and
NoC@90 (clicks to reach that Dice, a failure counting ``--max-clicks``), and the largest fall of the
mean Dice from one click to the next. Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE, Click
from CovidCTAnalysisLib.interactive.merge import DEFAULT_RULE, RULES, merge_lesion
from CovidCTAnalysisLib.interactive.refine import Refiner
from CovidCTAnalysisLib.interactive.simulate import next_click
from CovidCTAnalysisLib.loading.volume import labelmap_like
from CovidCTAnalysisLib.models.folder import load_model_folder

from training.evaluate import write_eval_metrics
from training.interactive_sessions import session_dice
from training.phantom_cache import parse_seeds, phantom_set

REPORT_AT = (0, 1, 3, 5, 10)
STARTS = ("empty", "automatic")
START_NOTES = {"empty": "true lungs, no lesion drawn",
               "automatic": "true lungs with the automatic method's lesions inside them (see automatic_start)"}


def automatic_start(segmenter) -> dict:
    """What the ``automatic`` start's lesions come from (recorded in the metrics)."""
    if segmenter is None:
        return {"source": "threshold", "method": "threshold.lesions.find_lesions on the true lungs"}
    return {"source": "segmenter", "method": "inference.segment.segment (as covidct analyze), lesion label",
            "model": segmenter.metadata.provenance()}


def start_labels(image: sitk.Image, truth: np.ndarray, start: str, segmenter=None, device: str = "cpu") -> np.ndarray:
    """The labelmap a session starts from: the true lungs, lesion removed (``empty``), or with the automatic
    lesions inside them: ``segmenter``'s (a loaded segmentation model) or, when it is None, the threshold's."""
    lungs = truth.copy()
    merge_lesion(lungs, np.zeros(lungs.shape, bool), (0, 0, 0, *image.GetSize()))  # lesion back to its lung
    if start == "empty":
        return lungs
    if segmenter is None:
        from CovidCTAnalysisLib.threshold.lesions import find_lesions

        found = sitk.GetArrayFromImage(find_lesions(image, labelmap_like(lungs, image))) > 0
    else:
        from CovidCTAnalysisLib.inference.segment import segment
        from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

        found = sitk.GetArrayFromImage(segment(image, lung_extent(segment_lungs(image)), segmenter, device)) == LESION
    lungs[found & (lungs > 0)] = LESION
    return lungs


def robot_session(image: sitk.Image, truth: np.ndarray, start: np.ndarray, model, device: str,
                  max_clicks: int, rule: str = DEFAULT_RULE) -> tuple[list[float], list[float]]:
    """Lesion Dice after 0..max_clicks robot clicks (after the truth is matched the curve stays), and the
    seconds per click."""
    refiner = Refiner(image, labelmap_like(start, image), model, device, rule=rule)
    target = truth == LESION
    spacing_zyx = image.GetSpacing()[::-1]
    dice, seconds = [session_dice(refiner.labels == LESION, target)], []
    for k in range(max_clicks):
        click = next_click(refiner.labels == LESION, target, spacing_zyx)
        if click is None:
            dice.append(dice[-1])
            continue
        positive, (z, y, x) = click
        lps = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        step = refiner.click(Click(ADD if positive else REMOVE, lps, f"robot #{k + 1}"))
        seconds.append(step.seconds)
        dice.append(session_dice(refiner.labels == LESION, target))
    return dice, seconds


def noc(curve: list[float], threshold: float, max_clicks: int) -> int:
    """Clicks needed to reach ``threshold`` (0 if the start does), ``max_clicks`` when never reached."""
    return next((k for k, d in enumerate(curve) if d >= threshold), max_clicks)


def summarise(curves: dict[str, list[list[float]]], max_clicks: int) -> dict:
    out = {}
    for start, rows in curves.items():
        mean = np.mean(np.array(rows), axis=0)
        out[start] = {
            "note": START_NOTES[start],
            "cases": len(rows),
            "dice_after_clicks": {str(k): round(float(mean[k]), 4) for k in REPORT_AT if k <= max_clicks},
            "dice_curve": [round(float(v), 4) for v in mean],
            "noc85": round(float(np.mean([noc(r, 0.85, max_clicks) for r in rows])), 2),
            "noc90": round(float(np.mean([noc(r, 0.90, max_clicks) for r in rows])), 2),
            "largest_fall_between_clicks": round(float(max(0.0, np.max(mean[:-1] - mean[1:]))), 4),
        }
    return out


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for start, s in summary.items():
        ax.plot(range(len(s["dice_curve"])), s["dice_curve"], marker="o", ms=3,
                label=f"{start} start (NoC@85 {s['noc85']}, NoC@90 {s['noc90']})")
    ax.axhline(0.85, ls=":", c="grey")
    ax.axhline(0.90, ls="--", c="grey")
    ax.set(xlabel="robot clicks", ylabel="mean lesion Dice", ylim=(0, 1), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.text(0.01, 0.01, "Research use, not for diagnosis. Synthetic phantoms.", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_interactive", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--phantom-kinds", default="covid")
    p.add_argument("--phantom-seeds", default="100-104", help="unseen seeds (checked against the training seeds)")
    p.add_argument("--cache-dir", default=None, help="phantom cache (default: <model-dir>/../phantom-cache)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--starts", default=",".join(STARTS))
    p.add_argument("--automatic-model", default=None,
                   help="segmentation model folder whose lesions make the automatic start (default: the threshold "
                        "method's lesions)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rule", default=DEFAULT_RULE, choices=RULES, help="merge rule (interactive.merge.RULES)")
    p.add_argument("--key", default="robot_user", help="eval_metrics key to write (e.g. one per rule)")
    p.add_argument("--plot", default=None, help="PNG of the curves (default: <model-dir>/<key>.png)")
    p.add_argument("--no-write", action="store_true", help="print the metrics, leave metadata.json as it is")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    model_dir = Path(args.model_dir)
    model = load_model_folder(model_dir, args.device)
    seeds = parse_seeds(args.phantom_seeds)
    trained = str((model.metadata.raw.get("training_data") or {}).get("dataset", {}).get("seeds", ""))
    overlap = sorted(set(seeds) & set(parse_seeds(trained))) if trained else []
    if overlap:
        raise SystemExit(f"--phantom-seeds {args.phantom_seeds} overlaps the training seeds {trained}: {overlap}")
    kinds = [k for k in args.phantom_kinds.split(",") if k]
    cases = phantom_set(kinds, seeds, args.cache_dir or model_dir.parent / "phantom-cache")
    starts = [s for s in args.starts.split(",") if s]
    unknown = sorted(set(starts) - set(STARTS))
    if unknown:
        raise SystemExit(f"--starts {args.starts}: unknown {unknown}; expected some of {list(STARTS)}")
    segmenter = load_model_folder(args.automatic_model, args.device) if args.automatic_model else None
    if segmenter is not None and segmenter.metadata.task != "segmentation":
        raise SystemExit(f"--automatic-model {args.automatic_model} is a {segmenter.metadata.task} model; "
                         "expected a segmentation model")
    curves: dict[str, list[list[float]]] = {s: [] for s in starts}
    seconds: list[float] = []
    for case in cases:
        image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.truth), sitk.sitkUInt8))
        for start in starts:
            labels = start_labels(image, truth, start, segmenter, args.device)
            dice, secs = robot_session(image, truth, labels, model, args.device, args.max_clicks, args.rule)
            curves[start].append(dice)
            seconds += secs
            print(f"[robot] {time.monotonic() - t0:7.1f}s | {case.case_id} {start}: Dice "
                  + " ".join(f"{k}:{dice[k]:.3f}" for k in REPORT_AT if k < len(dice)), flush=True)
    summary = summarise(curves, args.max_clicks)
    metrics = {"protocol": "robot clicks the centre of the largest error region (positive on a miss, negative on "
                           f"a false region), up to {args.max_clicks} clicks; NoC counts a failure as "
                           f"{args.max_clicks}",
               "data": f"synthetic phantoms {kinds} seeds {args.phantom_seeds} (not used in training)",
               "merge_rule": args.rule, "automatic_start": automatic_start(segmenter), "starts": summary, "seconds_per_click_median": round(float(np.median(seconds)), 3) if seconds else None,
               "seconds": round(time.monotonic() - t0, 1)}
    for start, s in summary.items():
        print(f"{start}: Dice after {s['dice_after_clicks']}; NoC@85 {s['noc85']}, NoC@90 {s['noc90']}; largest fall "
              f"{s['largest_fall_between_clicks']}")
    png = Path(args.plot) if args.plot else model_dir / f"{args.key}.png"
    plot(summary, png, f"{model.metadata.id} v{model.metadata.version}: robot user, rule {args.rule}")
    print(f"curve: {png}")
    if not args.no_write:
        existing = model.metadata.eval_metrics
        keep = {} if "status" in existing else existing  # the export's "not evaluated yet" placeholder goes
        write_eval_metrics(model_dir, {**keep, args.key: metrics})
        print(f"recorded in {model_dir / 'metadata.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
