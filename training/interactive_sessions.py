"""Simulated correction sessions for training the interactive model (DeepGrow's recipe, our clicks).

A training sample is an ROI patch of a volume on the model grid (centred on a lesion voxel, or a
lung voxel for the rest) with a start state, chosen at random:

- ``empty``: no clicks and no lesion drawn; the network must find the lesion from the image alone;
- ``truth``: nothing drawn, a first positive click at the centre of the largest true lesion region;
- ``automatic``: the lesion of an automatic segmentation (here: the truth degraded, ``degrade``) and
  a first click at the centre of its largest error region.

Then ``0..max_inner`` rounds: the network (no gradient) redraws the lesion, which is merged as the
core merges it (only within the lungs), and the simulated user (the core's ``simulate.next_click``:
the centre of the largest false-negative or false-positive region) adds a click. The last state is
the training input. MONAI's ``Interaction`` does the same inside an ignite engine; this loop keeps
our trainers' habits (plain PyTorch, bf16, DDP) instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.interactive.guidance import network_input
from CovidCTAnalysisLib.interactive.simulate import largest_region_centre, next_click
from CovidCTAnalysisLib.results.statistics import dice
from scipy import ndimage


@dataclass(frozen=True)
class ClickSimulation:
    """How clicks are simulated (recorded in the model's metadata as ``click_simulation``)."""

    p_empty: float = 0.15
    p_automatic: float = 0.4
    max_inner: int = 4
    lesion_centre_prob: float = 0.8
    initial: str = "truth: centre of the largest true lesion region"
    further: str = ("centre (deepest voxel) of the largest false-negative region -> positive click, of the "
                    "largest false-positive region -> negative click, whichever is larger")
    automatic_start: str = ("truth degraded: eroded or dilated 1-2 voxels, random regions dropped, "
                            "a false blob added in the lungs")
    rounds: list[str] = field(default_factory=lambda: ["empty", "truth", "automatic"])

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    image: np.ndarray  # (z, y, x) 0..1
    truth: np.ndarray  # bool lesion
    lungs: np.ndarray  # bool (lesion counts as lung)
    current: np.ndarray  # bool: the lesion drawn now
    positive: list = field(default_factory=list)  # (z, y, x) clicks in the patch
    negative: list = field(default_factory=list)
    start: str = "empty"


def crop_patch(array: np.ndarray, centre, roi_zyx, fill: float = 0.0) -> np.ndarray:
    """The ``roi_zyx`` box of a (z, y, x) array around ``centre``, padded with ``fill`` outside."""
    out = np.full(roi_zyx, fill, dtype=array.dtype)
    src, dst = [], []
    for c, r, n in zip(centre, roi_zyx, array.shape, strict=True):
        lo = int(c) - r // 2
        a, b = max(lo, 0), min(lo + r, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


def degrade(truth: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible automatic lesion: the truth a little too small or too big, some regions lost, a false blob."""
    out = truth.copy()
    op = rng.integers(3)
    if op == 0:
        out = ndimage.binary_erosion(out, iterations=int(rng.integers(1, 3)))
    elif op == 1:
        out = ndimage.binary_dilation(out, iterations=int(rng.integers(1, 3))) & lungs
    lab, n = ndimage.label(out)
    if n > 1:
        drop = rng.random(n) < 0.3
        out &= ~np.isin(lab, np.nonzero(drop)[0] + 1)
    if rng.random() < 0.5 and lungs.any():
        zz, yy, xx = np.nonzero(lungs & ~truth)
        if len(zz):
            k = int(rng.integers(len(zz)))
            r = int(rng.integers(2, 5))
            g = np.ogrid[tuple(slice(0, s) for s in out.shape)]
            ball = sum((gi - ci) ** 2 for gi, ci in zip(g, (zz[k], yy[k], xx[k]), strict=True)) <= r * r
            out |= ball & lungs
    return out


def session_dice(drawn: np.ndarray, truth: np.ndarray) -> float:
    """Lesion Dice of one interactive session (the core's ``statistics.dice``), with one difference on purpose:
    a patch or case without lesion that stays empty scores 1.0, not None, because drawing nothing there is the
    right answer and click curves need a number at every step."""
    value = dice(drawn, truth)
    return 1.0 if value is None else value


def sample_patch(image: np.ndarray, label: np.ndarray, roi_zyx, sim: ClickSimulation,
                 rng: np.random.Generator, lesion_value: int = LESION) -> Sample:
    """One ROI patch of a prepared case ((z, y, x) image 0..1 and labels) with its start state.

    ``lesion_value`` 3: labels 1/2/3 (lungs labelled); 1: lesion-only data, where all is taken as lung."""
    lesion = label == lesion_value
    lungs = label > 0 if lesion_value == LESION else np.ones(label.shape, bool)
    pool = lesion if lesion.any() and rng.random() < sim.lesion_centre_prob else (lungs if lungs.any() else None)
    if pool is None:
        centre = [int(rng.integers(n)) for n in image.shape]
    else:
        idx = np.flatnonzero(pool)
        centre = np.unravel_index(int(idx[rng.integers(len(idx))]), image.shape)
    s = Sample(crop_patch(image, centre, roi_zyx), crop_patch(lesion, centre, roi_zyx, False),
               crop_patch(lungs, centre, roi_zyx, False), np.zeros(roi_zyx, bool))
    u = rng.random()
    if u < sim.p_empty:
        return s
    if u < sim.p_empty + sim.p_automatic:
        s.start, s.current = "automatic", degrade(s.truth, s.lungs, rng)
        add_click(s)
    else:
        s.start = "truth"
        centre, n = largest_region_centre(s.truth)
        if n:
            s.positive.append(centre)
    return s


def add_click(s: Sample) -> bool:
    """The simulated user's next click for ``s`` (False when nothing is wrong)."""
    click = next_click(s.current, s.truth)
    if click is None:
        return False
    (s.positive if click[0] else s.negative).append(click[1])
    return True


def batch_input(samples: list[Sample], prep: dict) -> torch.Tensor:
    """(B, C, z, y, x) network input of the samples' present state."""
    return torch.from_numpy(np.stack([network_input(s.image, s.positive, s.negative, prep, s.current)
                                      for s in samples]))


@torch.no_grad()
def interact(model, samples: list[Sample], prep: dict, rounds: int, device, forward) -> None:
    """``rounds`` rounds of: the network redraws (merged within the lungs), the user clicks."""
    model.eval()
    for _ in range(rounds):
        active = [s for s in samples if s.start != "empty"]
        if not active:
            return
        pred = forward(model, batch_input(active, prep).to(device)).argmax(dim=1).cpu().numpy().astype(bool)
        for s, p in zip(active, pred, strict=True):
            s.current = p & s.lungs
            add_click(s)
    model.train()
