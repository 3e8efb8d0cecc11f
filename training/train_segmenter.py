"""Train the MONAI 3D U-Net (left lung, right lung, lesion) on CT volumes.

    python -m training.train_segmenter --dataset phantoms --phantom-seeds 0-9 --output-dir /tmp/seg
    python -m training.train_segmenter --dataset covid-ct-seg --data-root /data/COVID-19-CT-Seg --output-dir out
    python -m training.train_segmenter --dataset covid-19-20 --data-root /data/COVID-19-20 --output-dir out
    python -m training.train_segmenter --dataset phantoms,hybrids,weak --real-data ../shared/data \
        --real-exclude P001 --output-dir out   # a mix (training.segmenter_mix); P001 left out (LOPO)
    torchrun --nproc_per_node 2 -m training.train_segmenter ... --device cpu   # DDP (gloo on CPU)

The network is the core's ``build_segmenter``; inputs come from the core's
``transforms.segmenter_preprocess`` and ``get_segmenter_transforms`` (positive/negative
patch sampling). Method: CacheDataset, Dice+CE loss, sliding-window validation with
per-class DiceMetric; the paper's defaults: batch 4, SGD momentum 0.95, lr 5e-4 for 2
labels and 1e-4 for 4 labels. Writes under ``--output-dir`` only.
Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from CovidCTAnalysisLib.models.networks import DEFAULT_SEGMENTER_CHANNELS, DEFAULT_SEGMENTER_STRIDES, build_segmenter
from CovidCTAnalysisLib.models.transforms import get_segmenter_transforms, roi_size_zyx, segmenter_settings
from torch.utils.data import DataLoader, DistributedSampler

from training import segmenter_data as sdata
from training import segmenter_mix as smix
from training.common import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    Precision,
    TensorBoardLog,
    all_reduce_mean,
    barrier,
    command_line,
    load_checkpoint,
    rank_shares,
    save_checkpoint,
    setup_run,
    teardown_run,
    unwrap,
    wrap_ddp,
    write_json,
)
from training.parallel import map_processes
from training.phantom_cache import parse_seeds
from training.progress import time_left_text
from training.segmenter_prepare import prepare_case
from training.splits import DEFAULT_TRAIN_FRACTION
from training.train_classifier import RUN_FILE, make_optimizer

PAPER_LR = {2: 5e-4, 4: 1e-4}
SINGLE_LAYOUTS = ("covid-ct-seg", "covid-19-20")
REAL_PARTS = ("hybrids", "weak")


def _triple(text: str, flag: str) -> list[float]:
    vals = [float(v) for v in str(text).split(",")]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise SystemExit(f"{flag} {text!r}: expected one number or x,y,z")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train_segmenter", description=__doc__.split("\n")[0])
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", required=True,
                   help="covid-ct-seg | covid-19-20 (with --data-root), or a comma list of parts from phantoms, "
                        "hybrids (real CT backgrounds with synthetic lesions), weak (the real COVID-CT-MD sample with "
                        "slice labels as lesion-free constraints, training.segmenter_mix)")
    g.add_argument("--data-root", help="covid-ct-seg / covid-19-20 root; for hybrids the old name of --real-data")
    g.add_argument("--real-data", help="the shared-data root (../shared/data) for hybrids and weak")
    g.add_argument("--real-exclude", default="", help="real patients left out of hybrids and weak, e.g. P001")
    g.add_argument("--layout", default="auto", choices=["auto", "zenodo", "kaggle"], help="covid-ct-seg layout")
    g.add_argument("--mask-kind", default="lung_and_infection", choices=sorted(sdata.CHANNEL_NAMES),
                   help="covid-ct-seg masks: 4 labels (default), lungs only, or infection only")
    g.add_argument("--sides", default="warn", choices=["warn", "fix", "off"],
                   help="check left/right labels against patient coordinates")
    g.add_argument("--no-radiopaedia-hu", action="store_true", help="keep Radiopaedia cases' 0..255 values")
    g.add_argument("--phantom-kinds", default="covid,pneumonia,normal")
    g.add_argument("--phantom-seeds", default="0-9")
    g.add_argument("--phantom-spacing", type=float, default=None)
    g.add_argument("--hybrid-kinds", default="covid,pneumonia")
    g.add_argument("--hybrid-seeds", default="0-3", help="lesion seeds per real background (--dataset hybrids)")
    g.add_argument("--cache-dir")
    p.add_argument("--output-dir", required=True, help="everything is written here, nothing elsewhere")
    q = p.add_argument_group("preprocessing (recorded in the metadata; inference uses the same)")
    q.add_argument("--spacing", default="1.5,1.5,2.5", help="model spacing in mm, x,y,z")
    q.add_argument("--roi", default="96,96,64", help="patch / sliding-window size in voxels, x,y,z")
    q.add_argument("--hu-range", default="-1024,400")
    q.add_argument("--sw-overlap", type=float, default=0.25)
    q.add_argument("--margin-mm", type=float, default=10.0)
    q.add_argument("--lesion-edges", action=argparse.BooleanOptionalAction, default=True,
                   help="after inference, move lesion outlines onto the image's half-way HU (inference.lesion_edges; default). --no-lesion-edges for a model trained on radiologists' outlines, whose own edges should stand")
    n = p.add_argument_group("network")
    n.add_argument("--channels", default=",".join(map(str, DEFAULT_SEGMENTER_CHANNELS)))
    n.add_argument("--strides", default=",".join(map(str, DEFAULT_SEGMENTER_STRIDES)))
    n.add_argument("--num-res-units", type=int, default=2)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--iterations-per-epoch", type=int, default=None, help="cap on batches per epoch")
    t.add_argument("--batch-size", type=int, default=4, help="volumes per batch (paper: 4)")
    t.add_argument("--num-samples", type=int, default=1, help="patches per volume per batch")
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    t.add_argument("--lr", type=float, default=None, help="default: 5e-4 for 2 labels, 1e-4 for 4 labels (paper)")
    t.add_argument("--momentum", type=float, default=0.95)
    t.add_argument("--weight-decay", type=float, default=1e-5)
    t.add_argument("--lesion-crop-ratio", type=float, default=0.0,
                   help="> 0: centre patches by class with ratios background:left:right:lesion = 1:1:1:this "
                        "(RandCropByLabelClassesd), so that the small lesion class is seen more often; "
                        "0: the core's RandCropByPosNegLabeld pos=1 neg=1")
    t.add_argument("--precision", default="fp32", choices=Precision.CHOICES, help=Precision.HELP)
    t.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="cosine: anneal the learning rate to 0 over --epochs (per epoch)")
    t.add_argument("--val-every", type=int, default=1)
    t.add_argument("--train-fraction", type=float, default=DEFAULT_TRAIN_FRACTION)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--num-workers", type=int, default=0)
    return p


def load_cases(args, log=None) -> tuple[list[sdata.SegCase], dict, str]:
    """Cases, a description for the metadata, and the mask kind (which fixes the labels)."""
    if args.dataset not in SINGLE_LAYOUTS:
        return load_mix(args, log)
    if not args.data_root:
        raise SystemExit("--data-root is required for this --dataset")
    if args.dataset == "covid-ct-seg":
        cases = sdata.covid_ct_seg_cases(Path(args.data_root), args.layout, args.mask_kind)
        return cases, {"name": "COVID-19-CT-Seg (Ma et al. 2021, doi:10.5281/zenodo.3757476)",
                       "root": str(args.data_root), "layout": args.layout, "masks": args.mask_kind}, args.mask_kind
    cases = sdata.covid19_20_cases(Path(args.data_root))
    return cases, {"name": "COVID-19-20 challenge", "root": str(args.data_root)}, "infection"


def load_mix(args, log=None) -> tuple[list[sdata.SegCase], dict, str]:
    """``--dataset`` as a comma list of parts (phantoms, hybrids, weak): the cases and, per part, what went in."""
    from training.classifier_mix import parse_parts
    from training.real_cases import parse_patients

    try:
        parts = parse_parts(args.dataset)
        excluded = parse_patients(args.real_exclude)
    except ValueError as e:
        raise SystemExit(f"{e}; or one of {list(SINGLE_LAYOUTS)}") from e
    real_root = args.real_data or args.data_root  # --data-root: the name hybrids had before --real-data
    if any(p in REAL_PARTS for p in parts) and not real_root:
        raise SystemExit(f"--dataset {args.dataset}: hybrids and weak need --real-data (the ../shared/data folder)")
    if excluded and not any(p in REAL_PARTS for p in parts):
        raise SystemExit(f"--real-exclude {args.real_exclude}: only hybrids and weak hold real patients")
    cache = Path(args.cache_dir or Path(args.output_dir) / "cache")
    cases, mix = [], {}
    for part in parts:
        if part == "phantoms":
            kinds = [k.strip() for k in args.phantom_kinds.split(",") if k.strip()]
            got = sdata.phantom_seg_cases(kinds, parse_seeds(args.phantom_seeds), cache, args.phantom_spacing, log)
            mix[part] = smix.part_summary(got, (), name="synthetic chest phantoms (CovidCTAnalysisLib.phantom.generator)",
                                          kinds=kinds, seeds=args.phantom_seeds, spacing_mm=args.phantom_spacing)
        elif part == "hybrids":
            from training.hybrid_cases import HYBRID_VERSION, hybrid_seg_cases

            kinds = [k.strip() for k in args.hybrid_kinds.split(",") if k.strip()]
            got = hybrid_seg_cases(Path(real_root), kinds, parse_seeds(args.hybrid_seeds), cache, log, exclude=excluded)
            mix[part] = smix.part_summary(got, excluded, name="hybrids: lesion-free real CT (COVID-CT-MD normal001, "
                                          "clear slices of P001 and cap001) with synthetic lesions "
                                          "(training.hybrid_cases)", kinds=kinds, seeds=args.hybrid_seeds,
                                          version=HYBRID_VERSION, root=str(real_root))
        else:
            got = smix.weak_seg_cases(Path(real_root), cache, excluded, log)
            mix[part] = smix.part_summary(got, excluded, name="weak: COVID-CT-MD sample, threshold lungs on slices "
                                          "labelled clear, infected slices ignored (training.segmenter_mix)",
                                          version=smix.WEAK_VERSION, root=str(real_root))
        cases += got
    # the same shape as the classifier's (classifier_mix.mix_summary): {"parts": {part: ...}, "real_excluded": [...]}
    desc = {"name": "+".join(parts), "mix": {"parts": mix, "real_excluded": sorted(excluded)},
            "real_excluded": sorted(excluded)}
    if len(parts) == 1:
        desc.update({k: v for k, v in mix[parts[0]].items() if k not in ("cases", "patients")})
    return cases, desc, "lung_and_infection"


def overlay_image(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(3, H, 2W) RGB in 0..1: middle axial slice, prediction (left) and truth (right) over the CT."""
    colours = np.array([[0, 0, 0], [0.5, 0.68, 0.5], [0.95, 0.84, 0.57], [0.85, 0.4, 0.31]])
    z = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(axis=1))) if truth.any() else image.shape[0] // 2
    ct = np.repeat(image[z][None], 3, axis=0)
    panels = []
    for lab in (pred[z], truth[z]):
        rgb = ct.copy()
        m = lab > 0
        rgb[:, m] = 0.5 * rgb[:, m] + 0.5 * colours[np.clip(lab[m], 0, 3)].T
        panels.append(rgb)  # row 0 is anterior (LPS +y is posterior): anterior at the top
    return np.concatenate(panels, axis=2).astype(np.float32)


def class_weighted_crops(train_tf, prep: dict, n_labels: int, num_samples: int, lesion_ratio: float):
    """The core's training transforms with its foreground/background patch sampling replaced by
    per-class sampling: lesions fill well under 1 % of a chest, so with pos/neg sampling almost every
    "foreground" centre lies in a lung and the lesion class is learnt slowly. The last label is the lesion
    (4 labels: 1:1:1:ratio; lesion-only model: 1:ratio). Classes absent from a case are skipped."""
    from monai.transforms import Compose, RandCropByLabelClassesd, RandCropByPosNegLabeld

    ratios = [1.0] * (n_labels - 1) + [float(lesion_ratio)]
    crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=roi_size_zyx(prep),
                                   ratios=ratios, num_classes=n_labels, num_samples=num_samples,
                                   image_key="image", image_threshold=0.0, warn=False)
    ops = [crop if isinstance(t, RandCropByPosNegLabeld) else t for t in train_tf.transforms]
    if not any(t is crop for t in ops):
        raise RuntimeError("the core's segmenter training transforms no longer use RandCropByPosNegLabeld")
    return Compose(ops)


@torch.no_grad()
def validate(model, val_data: list[dict], prep: dict, n_labels: int, device) -> tuple[dict, np.ndarray | None]:
    """Sliding-window inference on the model grid; mean Dice per foreground class by the core's
    ``statistics.dice`` (the one evaluate and ``covidct analyze --reference`` use). A case whose truth lacks a
    class does not count towards that class's mean; a class absent from every case has None."""
    from CovidCTAnalysisLib.results.statistics import dice
    from monai.inferers import sliding_window_inference

    model.eval()
    rows = []
    overlay = None
    for i, d in enumerate(val_data):
        x = torch.as_tensor(d["image"])[None].to(device)
        logits = sliding_window_inference(x, roi_size_zyx(prep), int(prep["sw_batch_size"]), model,
                                          overlap=float(prep["sw_overlap"]), mode="gaussian")
        pred = logits.argmax(dim=1)[0].cpu().numpy()
        y = np.asarray(d["label"][0])
        rows.append([dice(pred == k, y == k) if (y == k).any() else None for k in range(1, n_labels)])
        if i == 0:
            overlay = overlay_image(d["image"][0], pred, d["label"][0])
    scored = [[row[k] for row in rows if row[k] is not None] for k in range(n_labels - 1)]
    # a label absent from every validation case has no Dice: None (JSON null), never NaN
    return {str(k + 1): (float(np.mean(v)) if v else None) for k, v in enumerate(scored)}, overlay


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = setup_run(args.output_dir, args.seed, args.device, args.threads)
    args.output_dir = str(ctx.output_dir)
    cases, dataset_desc, mask_kind = load_cases(args, ctx.log)
    labels = sdata.CHANNEL_NAMES[mask_kind]
    n_labels = len(labels)
    try:
        lo, hi = (float(v) for v in args.hu_range.split(","))
    except ValueError as e:
        raise SystemExit(f"--hu-range {args.hu_range!r}: expected lo,hi in HU, e.g. -1024,400") from e
    prep = segmenter_settings({"spacing_mm": _triple(args.spacing, "--spacing"),
                               "roi_size": [int(v) for v in _triple(args.roi, "--roi")], "hu_range": [lo, hi],
                               "sw_overlap": args.sw_overlap, "sw_batch_size": 1, "margin_mm": args.margin_mm,
                               "lesion_edges": args.lesion_edges})
    lr = args.lr if args.lr is not None else PAPER_LR.get(n_labels, 1e-4)
    split = smix.split_real_in_training(cases, args.train_fraction, args.seed)  # real patients train (segmenter_mix)
    ctx.log("data", f"{len(cases)} cases: {len(split.train)} train / {len(split.val)} validation (by patient)")
    by_id = {c.case_id: c for c in cases}
    prepared = {}

    def done(_i, job, case_arrays):
        prepared[job[0].case_id] = case_arrays
        ctx.log("data", f"prepared {len(prepared)}/{len(cases)}: {job[0].case_id} "
                        f"{tuple(case_arrays['image'].shape[1:])} (z,y,x)")

    workers = max(1, (os.cpu_count() or 1) // ctx.world_size)  # torchrun: the ranks share the cores
    map_processes(prepare_case, [(by_id[cid], prep, n_labels, args.sides, not args.no_radiopaedia_hu)
                                 for cid in split.train + split.val], workers, done)
    from monai.data import CacheDataset, list_data_collate

    # Mirroring swaps labels 1/2 (left/right lung); a lesion-only model has no sides to swap.
    train_tf = get_segmenter_transforms("train", prep, num_samples=args.num_samples,
                                        lr_flip_prob=0.5 if n_labels == 4 else 0.0)
    if args.lesion_crop_ratio > 0:
        train_tf = class_weighted_crops(train_tf, prep, n_labels, args.num_samples, args.lesion_crop_ratio)
    has_ignore = any(c.source == "weak" for c in cases)  # weak labels hold sdata.IGNORE_LABEL
    if has_ignore:
        train_tf = smix.ignore_aware_crops(train_tf)
    train_ds = CacheDataset([prepared[c] for c in split.train], transform=train_tf, cache_rate=1.0,
                            num_workers=0, progress=False)
    sampler = DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=args.seed) \
        if ctx.distributed else None
    train_dl = DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                          num_workers=args.num_workers, collate_fn=list_data_collate,
                          generator=torch.Generator().manual_seed(args.seed))
    val_data = [prepared[c] for c in split.val]
    shares = rank_shares(train_dl, ctx)  # every rank takes part

    arch_kwargs = {"n_labels": n_labels, "channels": [int(v) for v in args.channels.split(",")],
                   "strides": [int(v) for v in args.strides.split(",")], "num_res_units": args.num_res_units}
    precision = Precision(args.precision, ctx.device, spatial_dims=3, log=lambda m: ctx.log("model", m))
    model = wrap_ddp(precision.model(build_segmenter(**arch_kwargs)), ctx)
    opt = make_optimizer(args.optimizer, model.parameters(), lr, args.momentum, args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1)) \
        if args.lr_schedule == "cosine" else None
    from monai.losses import DiceCELoss

    loss_fn = smix.MaskedDiceCELoss() if has_ignore else DiceCELoss(to_onehot_y=True, softmax=True)
    loss_name = f"MaskedDiceCELoss(softmax, ignore {sdata.IGNORE_LABEL})" if has_ignore else "DiceCELoss(softmax)"
    out = ctx.output_dir
    start, best, history = 0, None, []
    if args.resume:
        state = load_checkpoint(out / CHECKPOINT_LAST, model, opt, ctx.device)
        start, best, history = state["epoch"] + 1, state["best_metric"], state["extra"].get("history", [])
        for _ in range(start if sched is not None else 0):
            sched.step()
        ctx.log("resume", f"from epoch {state['epoch']} (best {best})")
    tb = TensorBoardLog(ctx)
    step = sum(h.get("iterations", 0) for h in history)
    loop_started = time.monotonic()
    for epoch in range(start, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        for it, batch in enumerate(train_dl):
            if args.iterations_per_epoch and it >= args.iterations_per_epoch:
                break
            x, y = batch["image"].to(ctx.device), batch["label"].to(ctx.device).long()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(precision.forward(model, x), y)
            loss.backward()
            opt.step()
            total += loss.item()
            n += 1
            step += 1
            tb.scalar("loss/train_iteration", loss.item(), step)
        train_loss = all_reduce_mean(total / max(n, 1), ctx)
        entry = {"epoch": epoch, "train_loss": train_loss, "iterations": n, "lr": opt.param_groups[0]["lr"]}
        if sched is not None:
            sched.step()
        dice, is_best = None, False
        if ctx.is_main and val_data and ((epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs):
            dice, overlay = validate(unwrap(model), val_data, prep, n_labels, ctx.device)
            scored = [v for v in dice.values() if v is not None]
            mean = float(np.mean(scored)) if scored else None
            entry.update({"val_dice": {labels[k]: v for k, v in dice.items()}, "val_mean_dice": mean})
            for k, v in ((k, v) for k, v in dice.items() if v is not None):
                tb.scalar(f"dice/val_{labels[k].replace(' ', '_').lower()}", v, epoch)
            if overlay is not None:
                tb.image("overlay/val_prediction_vs_truth", overlay, epoch)
            rank = mean if mean is not None else -train_loss  # no label in any validation case: the loss
            is_best = best is None or rank > best
            best = rank if is_best else best
        elif ctx.is_main and not val_data:
            is_best, best = True, -train_loss  # no validation cases: keep the last
        history.append(entry)
        tb.scalar("loss/train", train_loss, epoch)
        if ctx.is_main:
            metric = entry.get("val_mean_dice")
            metric = -train_loss if metric is None else metric
            save_checkpoint(out / CHECKPOINT_LAST, model, opt, epoch, metric, best, {"history": history})
            if is_best:
                save_checkpoint(out / CHECKPOINT_BEST, model, opt, epoch, metric, best, {"history": history})
        ctx.log("epoch", f"{epoch + 1}/{args.epochs} loss {train_loss:.3f}"
                + (f" val Dice {', '.join(f'{labels[k]} ' + ('n/a' if v is None else f'{v:.3f}') for k, v in dice.items())}" if dice else "")
                + (" (best)" if is_best and dice else "")
                + time_left_text(epoch + 1 - start, args.epochs - epoch - 1, loop_started))
        barrier(ctx)
    tb.close()
    if ctx.is_main:
        notes = [note for c in cases for note in c.notes]
        write_json(out / RUN_FILE, {
            "task": "segmentation",
            "architecture": {"name": "monai.UNet", "kwargs": arch_kwargs},
            "labels": labels,
            "preprocessing": prep,
            "dataset": {**dataset_desc, "cases": len(cases), "notes": notes},
            "split": split.as_dict(),
            "val_cases": [{"patient_id": c, "image": str(by_id[c].image), "label": str(by_id[c].label)}
                          for c in split.val],
            "training": {"epochs": args.epochs, "iterations_per_epoch": args.iterations_per_epoch,
                         "batch_size": args.batch_size, "num_samples": args.num_samples,
                         "optimizer": args.optimizer, "lr": lr,
                         "momentum": args.momentum if args.optimizer == "sgd" else None,
                         "weight_decay": args.weight_decay, "loss": loss_name,
                         "lr_schedule": args.lr_schedule, "precision": precision.name, "precision_requested": args.precision,
                         "sampling": (f"RandCropByLabelClassesd ratios 1:1:1:{args.lesion_crop_ratio:g}"
                                      if args.lesion_crop_ratio > 0 and n_labels == 4
                                      else f"RandCropByLabelClassesd ratios 1:{args.lesion_crop_ratio:g}"
                                      if args.lesion_crop_ratio > 0 else "RandCropByPosNegLabeld pos=1 neg=1"),
                         "seed": args.seed,
                         "world_size": ctx.world_size, "rank_shares": shares, "device": str(ctx.device),
                         "sides": args.sides},
            "history": history,
            "best_val_metric": {"name": "val_mean_dice", "value": best},
            "command": command_line(),
            "args": vars(args),
            "seconds": round(ctx.elapsed(), 1),
        })
        ctx.log("done", f"best validation mean Dice {best}; {out / CHECKPOINT_BEST}")
    teardown_run(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
