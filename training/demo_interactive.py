"""``make demo``'s interactive step: train, export, evaluate (robot user) and install the DEMO interactive model.

Called by ``training.demo.main`` after the classifier and the segmenter, so that the robot user's automatic
start is the demo segmenter's output when it is installed (its lesions inside the true lungs), else the
threshold method's; ``eval_metrics.robot_user.automatic_start`` says which. Research use, not for diagnosis.
"""

from __future__ import annotations

from pathlib import Path

INTERACTIVE_ID = "covidct-interactive-demo"
TRAIN_SEEDS = "0-9"  # covid + pneumonia phantoms: 20 patients; the robot user measures on unseen seeds
PHANTOM_KINDS = "covid,pneumonia"
# The recipe of README's measured 4-channel model (image, positive, negative guidance, current lesion):
# 2.5 mm, ROI 40^3 voxels, a 3-level U-Net with one residual unit, up to 3 simulated rounds per sample, bf16.
RECIPE = ["--iterations", "200", "--val-every", "100", "--batch-size", "4", "--channels", "16,32,64",
          "--strides", "2,2", "--num-res-units", "1", "--max-inner", "3", "--precision", "auto", "--seed", "0"]
# --quick: a few steps of a 2-level U-Net and a 3-click robot on one case (the machinery, not the quality).
QUICK_RECIPE = ["--iterations", "4", "--val-every", "4", "--val-patches", "2", "--batch-size", "2",
                "--channels", "4,8", "--strides", "2", "--max-inner", "1"]
ROBOT_CLICKS = 20
QUICK_ROBOT_CLICKS = 3


def train_and_install_interactive(steps, work: Path, registry, train_seeds: str, eval_seeds: str, cache: Path,
                                  version: str, segmenter_id: str, quick: bool = False) -> None:
    """Four ``steps``: train (``training.train_interactive``), export (DEMO), robot-user evaluation from the
    empty and the automatic start (metrics and PNG curve into the model folder), install into ``registry``."""
    from training import evaluate_interactive, export
    from training import train_interactive as ti

    run_dir, model_dir = work / "interactive-run", work / "interactive-model"
    steps.start("train_interactive", f"training the demo interactive model on phantoms ({PHANTOM_KINDS}, seeds "
                                     f"{train_seeds}) with simulated clicks")
    ti.main(["--dataset", "phantoms", "--phantom-kinds", PHANTOM_KINDS, "--phantom-seeds", train_seeds,
             "--cache-dir", str(cache), "--output-dir", str(run_dir), *RECIPE, *(QUICK_RECIPE if quick else [])])
    steps.start("export_interactive", "exporting the interactive model folder")
    export.export(run_dir, model_dir, INTERACTIVE_ID, version, demo=True, force=True)
    segmenter = next((m for m in registry.list() if m.id == segmenter_id and m.version == version), None)
    start = f"the demo segmenter {segmenter.label_line()}" if segmenter else "the threshold method (no demo segmenter)"
    steps.start("evaluate_interactive", f"robot user on unseen phantom seeds {eval_seeds}: from empty and from "
                                        f"the automatic output of {start}")
    evaluate_interactive.main(["--model-dir", str(model_dir), "--phantom-seeds", eval_seeds, "--cache-dir", str(cache),
                               "--max-clicks", str(QUICK_ROBOT_CLICKS if quick else ROBOT_CLICKS),
                               *(["--automatic-model", str(registry.folder(segmenter))] if segmenter else [])])
    steps.start("install_interactive", f"installing {INTERACTIVE_ID} into {registry.root}")
    meta = registry.install(model_dir, force=True)
    print(f"    installed {meta.label_line()}", flush=True)


def print_robot_user(meta) -> None:
    """One line per start: Dice after 0/1/3/5/10 clicks, NoC@85/90, as recorded in the metadata."""
    robot = meta.eval_metrics.get("robot_user", {})
    source = robot.get("automatic_start", {}).get("source")
    for start, s in robot.get("starts", {}).items():
        print(f"    {meta.id}: from the {start} start{f' ({source})' if start == 'automatic' else ''}, mean lesion "
              f"Dice after clicks {s['dice_after_clicks']}, NoC@85 {s['noc85']}, NoC@90 {s['noc90']}", flush=True)
