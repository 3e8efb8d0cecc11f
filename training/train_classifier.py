"""Train the 3-class (Normal / Pneumonia / COVID-19) torchvision ResNet-50 on 2-D CT slices.

    python -m training.train_classifier --dataset phantoms --phantom-seeds 0-19 --output-dir /tmp/cls
    python -m training.train_classifier --dataset covid-ct-md --data-root /data/COVID-CT-MD --output-dir out
    torchrun --nproc_per_node 2 -m training.train_classifier ... --device cpu   # DDP (gloo on CPU)

The network is the core's ``build_classifier`` and every input is made by the core's
``transforms.classifier_inputs`` (see ``classifier_slices``). Splits are by patient,
stratified and seeded (70/30 by default). Writes under ``--output-dir`` only:
``checkpoint_last.pt``, ``checkpoint_best.pt`` (best validation slice accuracy),
``run.json`` (settings, split, history) and ``tensorboard/``. Package the result with
``python -m training.evaluate`` and ``python -m training.export``.
Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from CovidCTAnalysisLib.constants import CLASS_NAMES, DEFAULT_CLASSIFIER_WINDOWS
from CovidCTAnalysisLib.models.networks import build_classifier, sha256_file
from CovidCTAnalysisLib.models.transforms import classifier_settings, classifier_train_transforms
from torch.utils.data import DataLoader, DistributedSampler

from training import classifier_data as cdata
from training import classifier_mix as cmix
from training.classifier_slices import NORMAL, SliceDataset, case_slices
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
from training.metrics import classification_metrics, confusion_figure
from training.parallel import map_processes
from training.phantom_cache import parse_seeds
from training.progress import time_left_text
from training.real_cases import parse_patients
from training.splits import DEFAULT_TRAIN_FRACTION

RUN_FILE = "run.json"
SINGLE_LAYOUTS = ("folders", "covid-ct-md", "nifti-csv", "phantoms")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", required=True,
                   help=f"one layout of {list(SINGLE_LAYOUTS)}, or a comma list of parts {list(cmix.PARTS)} "
                        "(e.g. phantoms,hybrids,weak; see training/classifier_mix.py)")
    g.add_argument("--data-root", help="dataset folder (folders, covid-ct-md)")
    g.add_argument("--csv", help="nifti-csv: CSV with columns image,class[,patient_id,slice_labels]")
    g.add_argument("--class-folders", help="CLASS=FOLDER,... (defaults per layout, see classifier_data)")
    g.add_argument("--patient-regex", default=cdata.DEFAULT_PATIENT_REGEX,
                   help="folders: regex whose group 1 is the patient id in a file stem")
    g.add_argument("--phantom-kinds", default="normal,pneumonia,covid")
    g.add_argument("--phantom-seeds", default="0-9", help="e.g. 0-9 or 1,2,5")
    g.add_argument("--phantom-spacing", type=float, default=None, help="isotropic phantom spacing in mm")
    g.add_argument("--cache-dir", help="phantom and hybrid cache (default <output-dir>/cache)")
    g.add_argument("--real-data", help="shared-data root holding covid-ct-md/labels.json (parts hybrids and weak)")
    g.add_argument("--real-exclude", default="",
                   help="real patients to leave out of hybrids and weak, e.g. P001 (leave-one-patient-out)")
    g.add_argument("--hybrid-kinds", default="covid,pneumonia")
    g.add_argument("--hybrid-seeds", default="0", help="lesion seeds per real background (part hybrids; 0 gives 10 cases, ~160 slices at --max-slices-per-case 12)")
    g.add_argument("--lung-mask", default="threshold", choices=["threshold", "truth"],
                   help="lung box for cropping: the core's threshold method (as at inference) or phantom truth")
    g.add_argument("--max-slices-per-case", type=int, default=None,
                   help="at most this many slices of a patient's own class per patient (and half as many clear ones)")
    g.add_argument("--clear-slices", default="normal", choices=["normal", "skip"],
                   help="infection-free slices of Pneumonia/COVID-19 patients with slice labels: train them as "
                        "Normal (default) or leave them out (see training/classifier_slices.py)")
    g.add_argument("--normal-heights", default="matched", choices=["matched", "spread"],
                   help="Normal patients' slices: at the heights of the disease slices (default), or evenly spread")


def load_cases(args, log=None) -> tuple[list[cdata.ClassifierCase], dict]:
    """The dataset's cases and a description of it for the metadata."""
    d = args.dataset
    if d not in SINGLE_LAYOUTS:
        return load_mix(args, cmix.parse_parts(d), log)
    if d == "phantoms":
        kinds = [k.strip() for k in args.phantom_kinds.split(",") if k.strip()]
        seeds = parse_seeds(args.phantom_seeds)
        cache = Path(args.cache_dir or Path(args.output_dir) / "cache")
        cases = cdata.phantom_cases(kinds, seeds, cache, spacing=args.phantom_spacing, log=log)
        desc = {"name": "synthetic chest phantoms (CovidCTAnalysisLib.phantom.generator)", "kinds": kinds,
                "seeds": args.phantom_seeds, "spacing_mm": args.phantom_spacing}
    elif d == "folders":
        cases = cdata.folders_cases(Path(_need(args.data_root, "--data-root")),
                                    args.class_folders or cdata.DEFAULT_CLASS_FOLDERS, args.patient_regex)
        desc = {"name": "class folders of 2-D images", "root": str(args.data_root),
                "class_folders": args.class_folders or cdata.DEFAULT_CLASS_FOLDERS}
    elif d == "covid-ct-md":
        cases = cdata.covid_ct_md_cases(Path(_need(args.data_root, "--data-root")),
                                        args.class_folders or cdata.DEFAULT_CTMD_FOLDERS)
        desc = {"name": "COVID-CT-MD (Afshar et al., Sci Data 8:121, 2021)", "root": str(args.data_root)}
    else:
        cases = cdata.nifti_csv_cases(Path(_need(args.csv, "--csv")))
        desc = {"name": "volumes listed in a CSV", "csv": str(args.csv)}
    desc["patients"] = {CLASS_NAMES[k]: sum(c.class_index == k for c in cases) for k in range(len(CLASS_NAMES))}
    return cases, desc


def load_mix(args, parts: list[str], log=None) -> tuple[list[cdata.ClassifierCase], dict]:
    """``--dataset phantoms,hybrids,weak`` (any of them): each part's cases, tagged with ``case.part``."""
    exclude = parse_patients(args.real_exclude)
    real = [p for p in parts if p in cmix.REAL_PARTS]
    if real and not args.real_data:
        raise SystemExit(f"--dataset parts {real} need --real-data (the shared-data root with covid-ct-md/labels.json)")
    if exclude and not real:
        raise SystemExit(f"--real-exclude {sorted(exclude)} without a real part (hybrids, weak) in --dataset")
    cases, desc = [], {"name": "mix: " + ", ".join(parts), "parts": {}, "real_data": args.real_data,
                       "real_excluded": sorted(exclude)}
    for part in parts:
        if part == "phantoms":
            part_cases, part_desc = load_cases(argparse.Namespace(**{**vars(args), "dataset": "phantoms"}), log)
        elif part == "hybrids":
            from training.hybrid_cases import HYBRID_VERSION

            kinds = [k.strip() for k in args.hybrid_kinds.split(",") if k.strip()]
            cache = Path(args.cache_dir or Path(args.output_dir) / "cache")
            part_cases = cmix.hybrid_cases(Path(args.real_data), kinds, parse_seeds(args.hybrid_seeds), cache,
                                           exclude, log)
            part_desc = {"name": "hybrids: lesion-free real CT backgrounds with synthetic lesions "
                                 "(training.hybrid_cases)", "kinds": kinds, "seeds": args.hybrid_seeds,
                         "version": HYBRID_VERSION}
        else:
            part_cases = cmix.weak_cases(Path(args.real_data), exclude)
            part_desc = {"name": "weak: COVID-CT-MD sample (Afshar et al., Sci Data 8:121, 2021) with the "
                                 "radiologists' patient classes and slice labels; no voxel outline"}
        for c in part_cases:
            c.part = part
        cases += part_cases
        desc["parts"][part] = part_desc
    return cases, desc


def _need(value, flag: str):
    if not value:
        raise SystemExit(f"{flag} is required for this --dataset")
    return value


def parse_windows(text: str) -> list[list[float]]:
    """``"-600,1500;40,400;-500,700"`` -> [[-600, 1500], ...] (level, width in HU)."""
    try:
        return [[float(v) for v in w.split(",")] for w in text.split(";") if w.strip()]
    except ValueError as e:
        raise SystemExit(f"--windows {text!r}: expected 'level,width;level,width;...' in HU") from e


def preprocessing_from_args(args) -> dict:
    agg = {"rule": args.aggregation}
    if args.aggregation == "top_fraction_mean":
        agg["fraction"] = args.aggregation_fraction
    p = {"mode": args.mode, "windows": parse_windows(args.windows), "input_size": args.input_size,
         "keep_aspect": True, "imagenet_norm": True, "slice_step": args.slice_step, "batch_size": args.batch_size,
         "aggregation": agg}
    return classifier_settings(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train_classifier", description=__doc__.split("\n")[0])
    add_dataset_args(p)
    p.add_argument("--output-dir", required=True, help="everything is written here, nothing elsewhere")
    g = p.add_argument_group("preprocessing (recorded in the metadata; inference uses the same)")
    g.add_argument("--mode", default="hu_windows", choices=["hu_windows", "gray_png"])
    g.add_argument("--windows", default=";".join(f"{lv:g},{w:g}" for lv, w in DEFAULT_CLASSIFIER_WINDOWS))
    g.add_argument("--input-size", type=int, default=224)
    g.add_argument("--slice-step", type=int, default=1, help="inference classifies every k-th lung slice")
    g.add_argument("--aggregation", default="mean", choices=["mean", "top_fraction_mean"])
    g.add_argument("--aggregation-fraction", type=float, default=0.25)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--momentum", type=float, default=0.9, help="SGD only")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--balance-classes", action="store_true",
                   help="draw training slices with equal probability per class (COVID-19 patients give only their "
                        "few lesion slices, so that class would otherwise be the rarest)")
    t.add_argument("--samples-per-epoch", type=int, default=None,
                   help="with --balance-classes: slices drawn per epoch (default: all training slices)")
    t.add_argument("--augment-strength", type=float, default=1.0, help="0 disables augmentation")
    t.add_argument("--precision", default="fp32", choices=Precision.CHOICES, help=Precision.HELP)
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    t.add_argument("--pretrained", help="local ImageNet ResNet-50 state_dict (.pth/.safetensors); never downloaded")
    t.add_argument("--pretrained-sha256", help="refuse --pretrained unless it has this sha256")
    t.add_argument("--train-fraction", type=float, default=DEFAULT_TRAIN_FRACTION)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help=f"continue from <output-dir>/{CHECKPOINT_LAST}")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    t.add_argument("--num-workers", type=int, default=0)
    return p


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # fused: one kernel over all parameters instead of a loop of small ones (ResNet-50 has 161 tensors)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over a loader (eval mode)."""
    model.eval()
    probs, ys = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device)), dim=1).cpu())
        ys.append(y)
    if not probs:
        return np.zeros((0, len(CLASS_NAMES))), np.zeros(0, dtype=int)
    return torch.cat(probs).numpy(), torch.cat(ys).numpy()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = setup_run(args.output_dir, args.seed, args.device, args.threads)
    args.output_dir = str(ctx.output_dir)
    prep = preprocessing_from_args(args)
    ctx.log("data", f"reading {args.dataset} cases")
    cases, dataset_desc = load_cases(args, log=ctx.log)
    split = cmix.split_real_in_training(cases, args.train_fraction, args.seed)  # real patients: training (why: there)
    ctx.log("data", f"{len(cases)} patients: {len(split.train)} train / {len(split.val)} validation (by patient)")
    by_id = {c.patient_id: c for c in cases}
    slices, normal_heights = {}, []

    def sliced(_i, job, case_slices_):
        pid = job[0].patient_id
        slices[pid] = case_slices_
        per_class = np.bincount(case_slices_.y, minlength=len(CLASS_NAMES)).tolist()
        ctx.log("data", f"slices {len(slices)}/{len(cases)}: {pid} -> {len(case_slices_.x)} "
                        f"({', '.join(f'{n} {c}' for c, n in zip(CLASS_NAMES, per_class, strict=True) if n)})")

    # Disease patients first: Normal patients then give slices at the heights of the disease slices
    # (--normal-heights matched; see classifier_slices), so slice height cannot tell the classes apart.
    # Within each group the cases are independent: one process per core (the threshold lungs take seconds each).
    disease = [by_id[p] for p in split.train + split.val if by_id[p].class_index != NORMAL]
    normal = [by_id[p] for p in split.train + split.val if by_id[p].class_index == NORMAL]
    slice_args = (prep, args.lung_mask, args.max_slices_per_case, args.clear_slices)
    workers = max(1, (os.cpu_count() or 1) // ctx.world_size)  # torchrun: the ranks share the cores
    map_processes(case_slices, [(case, *slice_args, None) for case in disease], workers, sliced)
    for case in disease:
        normal_heights += [h for h, y in zip(slices[case.patient_id].heights, slices[case.patient_id].y,
                                             strict=False) if y != NORMAL]
    heights = normal_heights if args.normal_heights == "matched" else None
    map_processes(case_slices, [(case, *slice_args, heights) for case in normal], workers, sliced)
    if any(c.part for c in cases):
        dataset_desc["mix"] = cmix.mix_summary(cases, slices, dataset_desc["real_excluded"])
        ctx.log("data", f"mix: {dataset_desc['mix']}")
    train_ds = SliceDataset([slices[p] for p in split.train], prep,
                            classifier_train_transforms(prep, strength=args.augment_strength))
    val_ds = SliceDataset([slices[p] for p in split.val], prep)
    if len(train_ds) == 0:
        raise SystemExit("no training slices; check the dataset and --lung-mask")

    sampler = DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=args.seed) \
        if ctx.distributed else None
    gen = torch.Generator().manual_seed(args.seed)
    if args.balance_classes and sampler is None:
        counts = torch.bincount(train_ds.y, minlength=len(CLASS_NAMES)).clamp(min=1).double()
        sampler = torch.utils.data.WeightedRandomSampler(1.0 / counts[train_ds.y],
                                                         args.samples_per_epoch or len(train_ds),
                                                         replacement=True, generator=gen)
    elif args.balance_classes:
        ctx.log("data", "--balance-classes is not applied with distributed training (DistributedSampler)")
    train_dl = DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                          num_workers=args.num_workers, generator=gen, drop_last=len(train_ds) > args.batch_size)
    val_dl = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    shares = rank_shares(train_dl, ctx)  # every rank takes part

    # from scratch, each residual block starts as the identity (torchvision's zero_init_residual)
    model = build_classifier(len(CLASS_NAMES), args.pretrained, args.pretrained_sha256,
                             zero_init_residual=not args.pretrained)
    precision = Precision(args.precision, ctx.device, spatial_dims=2, log=lambda m: ctx.log("model", m))
    model = wrap_ddp(precision.model(model), ctx)
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
    out = ctx.output_dir
    start_epoch, best, history = 0, None, []
    if args.resume:
        state = load_checkpoint(out / CHECKPOINT_LAST, model, opt, ctx.device)
        start_epoch, best = state["epoch"] + 1, state["best_metric"]
        history = state["extra"].get("history", [])
        for _ in range(start_epoch):
            sched.step()
        ctx.log("resume", f"from epoch {state['epoch']} (best {best})")
    tb = TensorBoardLog(ctx)
    loss_fn = torch.nn.CrossEntropyLoss()
    loop_started = time.monotonic()
    for epoch in range(start_epoch, args.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        for step, (x, y) in enumerate(train_dl):
            x, y = x.to(ctx.device), y.to(ctx.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(precision.forward(model, x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
            if step % 10 == 0:
                ctx.log("train", f"epoch {epoch + 1}/{args.epochs} batch {step + 1}/{len(train_dl)} loss {loss.item():.3f}")
        sched.step()
        train_loss = all_reduce_mean(total / max(n, 1), ctx)
        entry = {"epoch": epoch, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"]}
        tb.scalar("loss/train", train_loss, epoch)
        m, acc, is_best = None, float("nan"), False
        if (epoch + 1) % max(args.val_every, 1) == 0 or epoch + 1 == args.epochs:
            probs, ys = predict(unwrap(model), val_dl, ctx.device)
            m = classification_metrics(ys, probs, CLASS_NAMES) if len(ys) else {"accuracy": None}
            acc = m["accuracy"] if m["accuracy"] is not None else -train_loss  # no validation slices: use the loss
            entry.update(val_slice_accuracy=m["accuracy"], val_macro_auc=m.get("macro_auc"))
            if m["accuracy"] is not None:
                tb.scalar("accuracy/val_slice", m["accuracy"], epoch)
                fig = confusion_figure(np.array(m["confusion_matrix"]["counts"]), CLASS_NAMES, f"epoch {epoch + 1}")
                if fig is not None:
                    tb.figure("confusion_matrix/val", fig, epoch)
            is_best = best is None or acc > best
            best = acc if is_best else best
        history.append(entry)
        if ctx.is_main:
            save_checkpoint(out / CHECKPOINT_LAST, model, opt, epoch, acc, best, {"history": history})
            if is_best:
                save_checkpoint(out / CHECKPOINT_BEST, model, opt, epoch, acc, best, {"history": history})
        val_text = "" if m is None else (f" val slice accuracy {m['accuracy'] if m['accuracy'] is None else round(m['accuracy'], 3)}"
                                         f"{' (best)' if is_best else ''}")
        left = time_left_text(epoch + 1 - start_epoch, args.epochs - epoch - 1, loop_started)
        ctx.log("epoch", f"{epoch + 1}/{args.epochs} loss {train_loss:.3f}{val_text}{left}")
        barrier(ctx)
    tb.close()
    if ctx.is_main:
        run = {
            "task": "classification",
            "architecture": {"name": "resnet50", "kwargs": {"num_classes": len(CLASS_NAMES)}},
            "labels": list(CLASS_NAMES),
            "preprocessing": prep,
            "dataset": dataset_desc,
            "split": split.as_dict(),
            "val_cases": [{"patient_id": p, "class": CLASS_NAMES[by_id[p].class_index]} for p in split.val],
            "training": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
                         "lr": args.lr, "momentum": args.momentum if args.optimizer == "sgd" else None,
                         "weight_decay": args.weight_decay, "schedule": "cosine", "seed": args.seed,
                         "precision": precision.name, "precision_requested": args.precision, "val_every": args.val_every,
                         "augmentation_strength": args.augment_strength, "balance_classes": args.balance_classes, "world_size": ctx.world_size,
                         "rank_shares": shares,
                         "device": str(ctx.device), "lung_mask": args.lung_mask,
                         "slices": {"train": len(train_ds), "val": len(val_ds),
                                    "train_per_class": dict(zip(CLASS_NAMES, torch.bincount(
                                        train_ds.y, minlength=len(CLASS_NAMES)).tolist(), strict=True))},
                         "clear_slices": args.clear_slices, "normal_heights": args.normal_heights,
                         "pretrained": ({"path": args.pretrained, "sha256": sha256_file(args.pretrained)}
                                        if args.pretrained else None)},
            "history": history,
            "best_val_metric": {"name": "val_slice_accuracy", "value": best},
            "command": command_line(),
            "args": vars(args),
            "seconds": round(ctx.elapsed(), 1),
        }
        write_json(out / RUN_FILE, run)
        ctx.log("done", f"best validation metric {best}; {out / CHECKPOINT_BEST}")
    teardown_run(ctx)
    return 0


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise SystemExit(f"{run_dir} is not a training output folder: {RUN_FILE} is missing")
    return json.loads(path.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
