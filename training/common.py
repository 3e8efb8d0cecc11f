"""Shared training plumbing: run context (seed, device, DDP), progress lines, logs, checkpoints.

Distributed runs: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
initialised with NCCL on CUDA and gloo on the CPU; only rank 0 writes logs and
checkpoints. Nothing is ever written outside ``--output-dir``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from CovidCTAnalysisLib import files
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.files import atomic_path
from CovidCTAnalysisLib.models.device import select_device

from training.progress import progress_line

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
INTENDED_USE = "Research use, not for diagnosis."


@dataclass
class RunContext:
    """Where this process stands: rank, world size, device, output folder, clock."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    output_dir: Path = Path(".")
    seed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, step: str, message: str) -> None:
        """One progress line (rank 0 only): ``[step] <elapsed>s | message`` (``training.progress``)."""
        if self.is_main:
            progress_line(step, message, self.started)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (CPU and CUDA), as MONAI's ``set_determinism`` does, without
    importing MONAI (seconds on a busy 2-core machine) where a run does not need it."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The core's ``select_device`` (``auto`` picks CUDA when present, else the CPU); CUDA means this
    rank's GPU (``local_rank``) unless an index is given."""
    try:
        device = select_device(name)
    except InputError as exc:
        raise SystemExit(str(exc)) from exc
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def setup_run(output_dir: str | Path, seed: int, device: str = "auto", threads: int | None = None) -> RunContext:
    """Create the output folder, seed everything and join the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device, local_rank)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
    out = Path(output_dir).expanduser().resolve()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    # Each rank gets a different augmentation stream but the same model initialisation
    # (DDP broadcasts rank 0's parameters at wrap time).
    seed_everything(seed + rank)
    return RunContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, output_dir=out, seed=seed)


def teardown_run(ctx: RunContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, ctx: RunContext) -> torch.nn.Module:
    """DistributedDataParallel when distributed, the module itself otherwise."""
    module = module.to(ctx.device)
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


def all_reduce_mean(value: float, ctx: RunContext) -> float:
    """Average a float over ranks (identity when not distributed)."""
    if not ctx.distributed:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def rank_shares(loader: torch.utils.data.DataLoader, ctx: RunContext) -> dict[str, Any] | None:
    """How the first epoch's training items are split over the ranks (for ``run.json``; None off rank 0).

    Each rank lists the dataset indices its sampler gives (a ``DistributedSampler`` is seeded by its own
    generator, so listing it changes no random state; any other sampler means the whole dataset); rank 0
    gathers them. With DDP working, each rank holds about 1/world_size of the items and none is seen twice
    except the sampler's padding (fewer than world_size items).
    """
    from torch.utils.data import DistributedSampler

    sampler = loader.sampler
    mine = [int(i) for i in sampler] if isinstance(sampler, DistributedSampler) else list(range(len(loader.dataset)))
    return gather_shares(mine, len(loader.dataset), ctx)


def gather_shares(mine: list[int], n_items: int, ctx: RunContext) -> dict[str, Any] | None:
    """``rank_shares`` for any list of item indices a rank owns (rank 0 gathers them; None off rank 0)."""
    shares = [mine]
    if ctx.distributed:
        import torch.distributed as dist

        shares = [None] * ctx.world_size
        dist.all_gather_object(shares, mine)
    if not ctx.is_main:
        return None
    seen = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in shares]), minlength=n_items)
    return {"dataset_items": n_items, "items_per_rank": [len(s) for s in shares],
            "items_covered": int((seen > 0).sum()), "items_seen_twice": int(np.maximum(seen - 1, 0).sum())}


def barrier(ctx: RunContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


class TensorBoardLog:
    """TensorBoard writer under ``<output>/tensorboard`` on rank 0; a no-op elsewhere."""

    def __init__(self, ctx: RunContext) -> None:
        self._writer = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(ctx.output_dir / "tensorboard"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        if self._writer is not None:
            self._writer.add_figure(tag, fig, step)

    def image(self, tag: str, image_chw: np.ndarray, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image_chw, step, dataformats="CHW")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    metric: float, best_metric: float | None, extra: dict[str, Any] | None = None) -> None:
    """Write a resumable checkpoint atomically (tensors and plain values only, so it loads with
    ``weights_only=True``)."""
    state = {
        # contiguous: a channels-last model's weights export to safetensors like any other
        "model": {k: v.contiguous() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "metric": float(metric),
        "best_metric": float("nan") if best_metric is None else float(best_metric),
        "torch_rng": torch.get_rng_state(),
        "extra_json": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    if not Path(path).is_file():
        raise SystemExit(f"--resume: checkpoint {path} does not exist; expected {CHECKPOINT_LAST} in --output-dir")
    state = torch.load(path, map_location=device, weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    state["extra"] = json.loads(state.get("extra_json") or "{}")
    if state["best_metric"] != state["best_metric"]:  # NaN: no metric yet
        state["best_metric"] = None
    return state


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``+dirty`` when the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Library versions that shaped the weights."""
    import monai
    import SimpleITK
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "monai": monai.__version__,
        "SimpleITK": SimpleITK.Version_VersionString() if hasattr(SimpleITK, "Version_VersionString")
        else str(SimpleITK.__version__),
        "numpy": np.__version__,
    }


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write, NaN refused (the core's ``files.write_json``)."""
    files.write_json(path, obj)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: a CUDA GPU that supports it, or a CPU whose oneDNN has bf16
    kernels (AVX-512 and newer). Elsewhere (an AVX2 CPU) autocast emulates bf16 and is slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN
            return False
    return False


class Precision:
    """``--precision``: fp32, bf16 autocast of the forward pass with channels-last memory, or auto.

    The weights and the optimiser stay fp32 and the loss is computed in fp32; only the
    network's forward pass runs in bfloat16. Measured on a 2-core CPU with AVX512-BF16:
    a ResNet-50 training step at 96 px took 0.34 s instead of 0.57 s, and a 3D U-Net step on a
    128x64x48 patch 0.23 s instead of 0.44 s. On a 2-core AVX2 CPU (AMD EPYC, no AVX-512) the same
    ResNet-50 step took 14.8 s in bf16 against 0.9-1.2 s in fp32: there autocast emulates bf16. So ``auto``
    takes bf16 only where the device runs it natively (``native_bf16``), and an explicit bf16 elsewhere
    is kept but said. The saved weights are plain fp32 either way.
    """

    CHOICES = ("auto", "fp32", "bf16")
    HELP = ("bf16: run the forward pass in bfloat16 autocast with channels-last memory (weights, optimiser and "
            "loss stay fp32); ~1.7x faster on CPUs with AVX512-BF16 and on recent GPUs, but ~15x slower on "
            "CPUs without AVX-512; auto: bf16 where the device runs it natively, else fp32")

    def __init__(self, name: str, device: torch.device, spatial_dims: int, log=None) -> None:
        if name not in self.CHOICES:
            raise ValueError(f"precision {name!r}; expected one of {self.CHOICES}")
        native = native_bf16(device)
        self.requested, self.device = name, device
        self.name = ("bf16" if native else "fp32") if name == "auto" else name
        if name == "auto":
            self.note = (f"--precision auto: {self.name} ({device.type} "
                         f"{'runs' if native else 'has no native'} bfloat16)")
        elif name == "bf16" and not native:
            self.note = (f"--precision bf16 on a {device.type} without native bfloat16: autocast emulates it, "
                         "which can be ~15x slower than fp32 (use --precision auto or fp32)")
        else:
            self.note = None
        if log is not None and self.note:
            log(self.note)
        fast = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        self.memory_format = fast if self.name == "bf16" else torch.contiguous_format

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=self.memory_format)

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's fp32 output for ``x``."""
        if self.name == "fp32":
            return model(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=self.memory_format)).float()
