"""Clicks from the radiologists' slice labels on a real COVID-19 CT (COVID-CT-MD P001): does ``covidct refine``
make the lesion-slice sensitivity and specificity better?

1. ``covidct analyze`` (``--method threshold`` by default; ``--method model`` with an installed segmenter),
   scored per slice as ``benchmarks.eval_threshold_slices`` does (a slice is positive at >= 50 mm³ of lesion).
2. A robot user that knows only the slice labels (which slices hold infection, not where) places clicks
   (``place_clicks``):

   * *add*, on a slice labelled infected that has no predicted lesion: at the centre of the most
     lesion-like lung region of that slice (``most_lesion_like``). Candidates are the 2-D connected regions
     of lung voxels whose HU, smoothed in-plane by a Gaussian of ``SMOOTH_MM`` (noise and thin vessels fall
     out), lies in the ground-glass band ``GGO_BAND_HU``, at least ``VESSEL_MARGIN_MM`` from anything denser
     (vessels, airway walls, hilum: a first try with the whole GGO-to-consolidation band put two of three
     clicks on P001's hilar vessels) and ``RIM_MM`` inside the lung edge (partial volume with the chest
     wall). The chosen one holds the most HU above the slice's median lung HU, summed over its voxels; one
     smaller than 50 mm³ on its slice gets no click. The worst slices are those with the largest region.
     ``add_rule_check`` measures the rule where a lesion is known: on P001's slices labelled infected where
     the threshold method found lesion, its point lies in that lesion on 58 of 71 (within 10 mm: 64); a
     variant that spared dense blobs (only thin structures, after an opening of 3 mm radius, counted as
     vessels; band up to consolidation) reached 54 (59), so it was not taken.
   * *remove*, on a slice labelled clear that is predicted positive: at the centre of the largest predicted
     lesion piece of that slice. The worst slices hold the most predicted lesion.

   "Centre" is the point deepest inside the region (``interactive.simulate.largest_region_centre``, the
   robot user of the interactive training), so it lies in the region even for a crescent. Up to
   ``--max-add`` / ``--max-remove`` clicks, worst slice first, clicks of one kind at least ``--min-gap-mm``
   apart along z. They are written as Slicer markups files (``.mrk.json``, LPS) and given to
   ``covidct refine``.
3. The refined labelmap is scored again. Results: ``benchmarks/results/eval_refine_real.json`` (clicks,
   before/after sensitivity and specificity, lesion mL, the models' provenance, DEMO flag) and
   ``eval_refine_real_preview.png`` (the clicked slices before and after, the clicks marked).

    python -m benchmarks.eval_refine_real --models-dir DIR [--method threshold|model] [--threads 1]

``DIR`` must hold an interactive model (see README, "Correcting lesions with clicks"). ``benchmarks/results/``
is not committed; README's picture is a copy, ``Resources/Screenshots/refine_real_p001.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, GGO_BAND_HU, LESION
from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE
from CovidCTAnalysisLib.interactive.simulate import largest_region_centre
from CovidCTAnalysisLib.masks import pieces
from scipy import ndimage

from benchmarks.eval_threshold_slices import MIN_SLICE_LESION_MM3, RESULTS, SHARED_DATA, scores, slice_positive

SMOOTH_MM = 2.0  # in-plane Gaussian sigma before the HU band: a 2-3 mm vessel falls below -750 HU, GGO stays in
VESSEL_MARGIN_MM = 3.0  # vessels and airway walls, widened by this, are not ground glass
RIM_MM = 3.0  # lung rim left out of the add-click search (partial volume with wall and mediastinum)


@dataclass(frozen=True)
class SliceClick:
    """One robot click: ``kind`` add/remove, voxel ``index_zyx``, the slice's label and the region it aims at."""

    kind: str
    index_zyx: tuple[int, int, int]
    region_mm2: float  # area of the aimed region on its slice
    why: str


def lesion_like(hu_slice: np.ndarray, lung_slice: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Lung voxels of one axial slice that look like ground glass: smoothed HU in the GGO band, away from
    solid structures (vessels, airway walls, mediastinum: above the band, widened by ``VESSEL_MARGIN_MM``)
    and from the lung rim."""
    sigma = [SMOOTH_MM / s for s in spacing_yx]
    smooth = ndimage.gaussian_filter(hu_slice.astype(np.float32), sigma=sigma)
    solid = ndimage.gaussian_filter(hu_slice.astype(np.float32), sigma=[0.5 * g for g in sigma]) > GGO_BAND_HU[1]
    margin = [max(1, round(VESSEL_MARGIN_MM / s)) for s in spacing_yx]
    near_solid = ndimage.binary_dilation(solid, structure=np.ones((2 * margin[0] + 1, 2 * margin[1] + 1), bool))
    rim = [max(1, round(RIM_MM / s)) for s in spacing_yx]
    inner = ndimage.binary_erosion(lung_slice, structure=np.ones((2 * rim[0] + 1, 2 * rim[1] + 1), bool))
    return inner & ~near_solid & (smooth >= GGO_BAND_HU[0]) & (smooth <= GGO_BAND_HU[1])


def most_lesion_like(hu_slice: np.ndarray, lung_slice: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """The connected ``lesion_like`` region with the most HU above the slice's median lung HU, summed over its
    voxels (a large faint patch and a small dense one both count); all False when there is none."""
    candidates = pieces(lesion_like(hu_slice, lung_slice, spacing_yx))
    if candidates.n == 0:
        return np.zeros(hu_slice.shape, bool)
    smooth = ndimage.gaussian_filter(hu_slice.astype(np.float32), sigma=[SMOOTH_MM / s for s in spacing_yx])
    excess = np.clip(smooth - np.median(hu_slice[lung_slice]), 0, None)
    totals = ndimage.sum_labels(excess, candidates.labels, index=np.arange(1, candidates.n + 1))
    return candidates.labels == 1 + int(np.argmax(totals))


def _spread(candidates: list[SliceClick], limit: int, min_gap_slices: int) -> list[SliceClick]:
    """The first ``limit`` candidates (already worst first) at least ``min_gap_slices`` apart along z."""
    chosen: list[SliceClick] = []
    for c in candidates:
        if len(chosen) == limit:
            break
        if all(abs(c.index_zyx[0] - k.index_zyx[0]) >= min_gap_slices for k in chosen):
            chosen.append(c)
    return chosen


def place_clicks(hu: np.ndarray, labelmap: np.ndarray, infected: np.ndarray, spacing_xyz: tuple[float, float, float],
                 max_add: int = 5, max_remove: int = 5, min_gap_mm: float = 10.0) -> list[SliceClick]:
    """Robot clicks from slice labels alone (see the module docstring); arrays are (z, y, x).

    ``labelmap``: the analysis' 1/2/3 labels; ``infected``: per z, the radiologists' label.
    """
    infected = np.asarray(infected, dtype=bool)
    if hu.shape != labelmap.shape or infected.shape != (hu.shape[0],):
        raise ValueError(f"image {hu.shape}, labelmap {labelmap.shape} and {infected.shape[0]} slice labels do not "
                         "match; expected one label per z of one grid")
    sx, sy, sz = spacing_xyz
    pixel_mm2 = sx * sy
    min_mm2 = MIN_SLICE_LESION_MM3 / sz  # the same 50 mm³ a slice needs to count as positive
    lesion = labelmap == LESION
    predicted = slice_positive(lesion, spacing_xyz)
    add, remove = [], []
    for z in np.nonzero(infected & ~predicted)[0]:
        centre, n = largest_region_centre(most_lesion_like(hu[z], labelmap[z] > 0, (sy, sx)), (sy, sx))
        if n * pixel_mm2 >= min_mm2:
            add.append(SliceClick(ADD, (int(z), *centre), round(n * pixel_mm2, 1),
                                  "labelled infected, no predicted lesion: most lesion-like lung region"))
    for z in np.nonzero(~infected & predicted)[0]:
        centre, n = largest_region_centre(lesion[z], (sy, sx))
        remove.append(SliceClick(REMOVE, (int(z), *centre), round(n * pixel_mm2, 1),
                                 "labelled clear, predicted lesion: largest predicted lesion piece"))
    gap = max(1, int(np.ceil(min_gap_mm / sz)))
    worst_first = lambda clicks: sorted(clicks, key=lambda c: (-c.region_mm2, c.index_zyx[0]))  # noqa: E731
    return _spread(worst_first(add), max_add, gap) + _spread(worst_first(remove), max_remove, gap)


def add_rule_check(hu: np.ndarray, labelmap: np.ndarray, infected: np.ndarray,
                   spacing_xyz: tuple[float, float, float]) -> dict:
    """How often the add rule's point lies in the analysis' own lesion, on the slices labelled infected where the
    analysis found lesion: a check of the rule against the only voxel-level lesion there is (itself imperfect)."""
    sx, sy, _ = spacing_xyz
    lesion = labelmap == LESION
    inside = near = n = 0
    for z in np.nonzero(np.asarray(infected, bool) & slice_positive(lesion, spacing_xyz))[0]:
        centre, size = largest_region_centre(most_lesion_like(hu[z], labelmap[z] > 0, (sy, sx)), (sy, sx))
        if size:
            n += 1
            inside += bool(lesion[z][centre])
            near += bool(ndimage.distance_transform_edt(~lesion[z], sampling=(sy, sx))[centre] <= 10.0)
    return {"slices": n, "point_inside_lesion": inside, "point_within_10_mm_of_lesion": near}


def click_lps(image: sitk.Image, click: SliceClick) -> tuple[float, float, float]:
    z, y, x = click.index_zyx
    return tuple(float(v) for v in image.TransformIndexToPhysicalPoint((x, y, z)))  # type: ignore[return-value]


def write_markups(points: list[tuple[float, float, float]], path: Path, name: str) -> Path:
    """A Slicer point list (``.mrk.json``, LPS mm) as ``covidct refine --add/--remove`` reads it."""
    from CovidCTAnalysisLib.files import write_json

    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                      "Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "name": name,
                        "controlPoints": [{"id": str(i), "label": f"{name}-{i}", "position": list(p),
                                           "positionStatus": "defined"} for i, p in enumerate(points, 1)]}]}
    write_json(path, doc)
    return path


def _covidct(argv: list[str]) -> None:
    from CovidCTAnalysisLib.cli.main import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"covidct {' '.join(argv)} exited with {code}")


def _lesion_ml(report: dict) -> float:
    return next((float(s["volume_ml"]) for s in report["segments"] if s["label"] == LESION), 0.0)


def evaluate(image_path: Path, slice_labels, work: Path, *, method: str = "threshold", models_dir: str | None = None,
             interactive_model: str | None = None, max_add: int = 5, max_remove: int = 5,
             min_gap_mm: float = 10.0, device: str = "cpu") -> tuple[dict, dict]:
    """Analyse, click, refine, score. Returns (the JSON result, arrays for the picture)."""
    from CovidCTAnalysisLib.loading.load import load_ct
    from CovidCTAnalysisLib.results.outputs import LABELMAP_NII, REPORT_JSON

    analysis, refined = work / "analysis", work / "refined"
    for earlier in (analysis, refined):  # a kept --work-dir of an earlier run: this run's outputs replace its own
        if earlier.exists():
            print(f"replacing {earlier} of an earlier run", flush=True)
            shutil.rmtree(earlier)
    common = ["--models-dir", str(models_dir)] if models_dir else []
    t0 = time.perf_counter()
    _covidct(["analyze", str(image_path), "-o", str(analysis), "--method", method, "--segment", "always",
              "--dicom-seg", "off", "--progress", "none", "--device", device, *common])
    t_analyze = time.perf_counter() - t0
    image = load_ct(image_path).image
    hu = sitk.GetArrayFromImage(image)
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(analysis / LABELMAP_NII)))
    truth = np.asarray(slice_labels, dtype=bool)
    if truth.shape != (hu.shape[0],):
        raise ValueError(f"{truth.size} slice labels for {hu.shape[0]} slices of {image_path}")
    spacing = image.GetSpacing()
    clicks = place_clicks(hu, before, truth, spacing, max_add, max_remove, min_gap_mm)
    if not clicks:
        raise RuntimeError("the slice labels and the analysis agree everywhere a click could be placed: nothing to do")
    argv = ["refine", str(analysis), "-o", str(refined), "--dicom-seg", "off", "--device", device, *common]
    for kind in (ADD, REMOVE):
        points = [click_lps(image, c) for c in clicks if c.kind == kind]
        if points:
            argv += [f"--{kind}", str(write_markups(points, work / f"{kind}.mrk.json", f"{kind}-lesion"))]
    if interactive_model:
        argv += ["--model", interactive_model]
    t0 = time.perf_counter()
    _covidct(argv)
    t_refine = time.perf_counter() - t0
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(refined / LABELMAP_NII)))
    rep_before = json.loads((analysis / REPORT_JSON).read_text())
    rep_after = json.loads((refined / REPORT_JSON).read_text())
    lung_slices = (before > 0).any(axis=(1, 2))
    pos_before, pos_after = slice_positive(before == LESION, spacing), slice_positive(after == LESION, spacing)
    model = rep_after["interactive"]["model"]
    result = {
        "input": str(image_path), "size": list(image.GetSize()), "spacing_mm": [round(s, 3) for s in spacing],
        "method": method, "slice_rule": f"positive at >= {MIN_SLICE_LESION_MM3:g} mm3 of lesion",
        "n_slices": int(truth.size), "n_infected_slices": int(truth.sum()),
        "click_rule": {"smooth_mm": SMOOTH_MM, "rim_mm": RIM_MM, "band_hu": [GGO_BAND_HU[0], CONSOLIDATION_BAND_HU[1]],
                       "max_add": max_add, "max_remove": max_remove, "min_gap_mm": min_gap_mm},
        "clicks": [{**asdict(c), "lps_mm": [round(v, 2) for v in click_lps(image, c)],
                    "slice_labelled_infected": bool(truth[c.index_zyx[0]]),
                    "slice_positive_before": bool(pos_before[c.index_zyx[0]]),
                    "slice_positive_after": bool(pos_after[c.index_zyx[0]])} for c in clicks],
        "before": {**scores(pos_before, truth, lung_slices), "lesion_ml": round(_lesion_ml(rep_before), 1)},
        "after": {**scores(pos_after, truth, lung_slices), "lesion_ml": round(_lesion_ml(rep_after), 1)},
        "add_rule_check_on_detected_slices": add_rule_check(hu, before, truth, spacing),
        "slices_flipped": {
            "to_positive_labelled_infected": np.nonzero(~pos_before & pos_after & truth)[0].tolist(),
            "to_positive_labelled_clear": np.nonzero(~pos_before & pos_after & ~truth)[0].tolist(),
            "to_negative_labelled_clear": np.nonzero(pos_before & ~pos_after & ~truth)[0].tolist(),
            "to_negative_labelled_infected": np.nonzero(pos_before & ~pos_after & truth)[0].tolist()},
        "changed_voxels": int(np.sum(before != after)),
        "non_lesion_labels_unchanged_outside_lesion": bool(np.array_equal(before > 0, after > 0)),
        "analysis_models": [m for m in rep_before.get("models", [])],
        "interactive_model": model, "demo": bool(model.get("demo")) or any(m.get("demo") for m in rep_before.get(
            "models", [])),
        "intended_use": rep_after.get("intended_use") or model.get("intended_use"),
        "seconds": {"analyze": round(t_analyze, 1), "refine": round(t_refine, 1)},
    }
    return result, {"hu": hu, "before": before, "after": after, "truth": truth, "pos_before": pos_before,
                    "pos_after": pos_after, "clicks": clicks, "spacing": spacing}


def save_preview(kept: dict, result: dict, path: Path, max_slices: int = 5) -> Path:
    """Strip of slice labels (radiologists / before / after), then the clicked slices before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CovidCTAnalysisLib.results.preview import LUNG_WINDOW, _overlay

    clicks = kept["clicks"]
    shown = ([c for c in clicks if c.kind == ADD][: (max_slices + 1) // 2]
             + [c for c in clicks if c.kind == REMOVE][: max_slices // 2])
    sx, sy, _ = kept["spacing"]
    fig = plt.figure(figsize=(3.6 * len(shown), 8.8))
    grid = fig.add_gridspec(3, len(shown), height_ratios=[0.35, 1, 1])
    strip = fig.add_subplot(grid[0, :])
    strip.imshow(np.stack([kept["truth"], kept["pos_before"], kept["pos_after"]]).astype(float), aspect="auto",
                 cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    strip.set_yticks([0, 1, 2], ["radiologists", "before", "after"])
    strip.set_xlabel("slice z (0 = inferior); clicks: green + add, blue x remove")
    for c in clicks:
        strip.plot(c.index_zyx[0], 0, "+" if c.kind == ADD else "x", color="lime" if c.kind == ADD else "blue", ms=8)
    for col, c in enumerate(shown):
        z, y, x = c.index_zyx
        lung = kept["before"][z] > 0
        rows, cols = np.nonzero(lung)
        box = (slice(max(rows.min() - 5, 0), rows.max() + 6), slice(max(cols.min() - 5, 0), cols.max() + 6))
        for row, key in ((1, "before"), (2, "after")):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(kept["hu"][z][box], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=sy / sx,
                      interpolation="nearest")
            labels = kept[key][z][box]
            ax.contour(labels > 0, [0.5], colors="yellow", linewidths=0.5)  # lungs: outline only, lesion filled
            ax.imshow(_overlay(np.where(labels == LESION, LESION, 0)), aspect=sy / sx, interpolation="nearest")
            if (labels == LESION).any():
                ax.contour(labels == LESION, [0.5], colors="red", linewidths=0.8)
            ax.plot(x - box[1].start, y - box[0].start, "+" if c.kind == ADD else "x", ms=14, mew=2.5,
                    color="lime" if c.kind == ADD else "blue")
            positive = kept["pos_" + key][z]
            ax.set_title(f"{key}: z={z} labelled {'infected' if kept['truth'][z] else 'clear'}, "
                         f"{'positive' if positive else 'negative'}", fontsize=8)
            ax.axis("off")
    b, a = result["before"], result["after"]
    model = result["interactive_model"]
    fig.suptitle(
        f"{'DEMO model (trained on synthetic phantoms) - ' if result['demo'] else ''}research use, not for diagnosis\n"
        f"P001 (COVID-CT-MD), {result['method']} analysis, then {len(clicks)} clicks placed from the slice labels, "
        f"refined with {model.get('id')} v{model.get('version')}\n"
        f"lesion-slice sensitivity {b['sensitivity']:.2f} -> {a['sensitivity']:.2f}, specificity "
        f"{b['specificity']:.2f} -> {a['specificity']:.2f}, lesion {b['lesion_ml']} -> {a['lesion_ml']} mL "
        "(lungs outlined yellow, lesion red)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from training.real_cases import covid_ct_md_sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="P001", help="a slice-labelled case of the COVID-CT-MD sample")
    p.add_argument("--image", help="the CT to analyse (default: the case's 256x256 NIfTI; its z must be the labels'")
    p.add_argument("--method", choices=("threshold", "model"), default="threshold")
    p.add_argument("--models-dir", help="model registry holding the interactive model (default $COVIDCT_MODELS_DIR)")
    p.add_argument("--model", help="interactive model ID[@VER]")
    p.add_argument("--max-add", type=int, default=5)
    p.add_argument("--max-remove", type=int, default=5)
    p.add_argument("--min-gap-mm", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--work-dir", help="keep the analysis, markups and refined result here (default: a temp folder); the "
                                          "analysis/ and refined/ of an earlier run there are replaced")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cases = {c.patient: c for c in covid_ct_md_sample(SHARED_DATA)}
    case = cases.get(args.case)
    if case is None or case.slice_labels is None:
        raise SystemExit(f"--case {args.case!r}: expected a slice-labelled case, one of "
                         f"{[k for k, c in cases.items() if c.slice_labels]}")
    with tempfile.TemporaryDirectory(prefix="covidct-refine-real-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result, kept = evaluate(Path(args.image) if args.image else case.image_path, case.slice_labels, work,
                                method=args.method, models_dir=args.models_dir, interactive_model=args.model,
                                max_add=args.max_add, max_remove=args.max_remove, min_gap_mm=args.min_gap_mm)
    result = {"case": args.case, **result, "torch_threads": args.threads}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "eval_refine_real.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = save_preview(kept, result, RESULTS / "eval_refine_real_preview.png")
    for key in ("before", "after"):
        print(f"{key:6}: {json.dumps(result[key])}")
    for c in result["clicks"]:
        print(f"{c['kind']:6} z={c['index_zyx'][0]:3} region {c['region_mm2']:7.1f} mm2, slice positive "
              f"{c['slice_positive_before']} -> {c['slice_positive_after']}")
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
