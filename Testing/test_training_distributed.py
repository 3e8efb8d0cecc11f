"""torchrun --nproc_per_node 2 with the gloo backend on the CPU: one epoch per script, rank-0 outputs only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _torchrun(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module,
           *args, "--device", "cpu", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _check_outputs(out: Path, tmp_path: Path, proc, sampler: bool = True) -> dict:
    """``sampler``: shares from a DistributedSampler (padded to equal lengths); else a strided share of patients."""
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_best.pt", "checkpoint_last.pt"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written to the working directory
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["world_size"] == 2
    state = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 0
    assert proc.stdout.count("[done]") == 1  # progress lines from rank 0 only
    # each rank trains on its own half: together every item once, plus at most the sampler's one padding item
    shares = run["training"]["rank_shares"]
    n = shares["dataset_items"]
    if sampler:
        assert n >= 2 and shares["items_per_rank"] == [(n + 1) // 2] * 2, shares
        assert shares["items_covered"] == n and shares["items_seen_twice"] == 2 * ((n + 1) // 2) - n, shares
    else:  # each patient in exactly one rank's share, none left out
        assert n >= 2 and shares["items_per_rank"] == [(n + 1) // 2, n // 2], shares
        assert shares["items_covered"] == n and shares["items_seen_twice"] == 0, shares
    return run


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_torchrun_gloo_classifier(tmp_path):
    out = tmp_path / "out"
    proc = _torchrun("training.train_classifier",
                     ["--dataset", "phantoms", "--phantom-seeds", "0-3", "--phantom-spacing", "7",
                      "--phantom-kinds", "normal,covid", "--epochs", "1", "--input-size", "32",
                      "--max-slices-per-case", "2", "--batch-size", "2", "--optimizer", "sgd",
                      "--output-dir", str(out)], tmp_path)
    run = _check_outputs(out, tmp_path, proc)
    assert run["training"]["slices"]["train"] > 0


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_torchrun_gloo_segmenter(tmp_path):
    out = tmp_path / "out"
    proc = _torchrun("training.train_segmenter",
                     ["--dataset", "phantoms", "--phantom-seeds", "0-3", "--phantom-spacing", "8",
                      "--phantom-kinds", "covid", "--epochs", "1", "--spacing", "8", "--roi", "32",
                      "--batch-size", "1", "--channels", "4,8,16", "--strides", "2,2", "--num-res-units", "1",
                      "--output-dir", str(out)], tmp_path)
    _check_outputs(out, tmp_path, proc)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_torchrun_gloo_interactive(tmp_path):
    out = tmp_path / "out"
    proc = _torchrun("training.train_interactive",
                     ["--dataset", "phantoms", "--phantom-seeds", "0-3", "--phantom-spacing", "8",
                      "--phantom-kinds", "covid", "--iterations", "1", "--val-every", "1", "--val-patches", "2",
                      "--spacing", "8", "--roi", "16", "--batch-size", "1", "--max-inner", "1",
                      "--channels", "4,8,16", "--strides", "2,2", "--num-res-units", "1", "--train-fraction", "0.75",
                      "--output-dir", str(out)], tmp_path)
    run = _check_outputs(out, tmp_path, proc, sampler=False)
    assert run["training"]["rank_shares"]["dataset_items"] == len(run["split"]["train"]) == 3
    assert "1" in run["history"][0]["val_dice_after_clicks"]  # rank 0 validated on its own
