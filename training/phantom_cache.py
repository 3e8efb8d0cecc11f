"""Synthetic chest phantoms for training, cached on disk.

``make_phantom`` (the core's ``phantom.py``) is deterministic for a seed, so a phantom
generated once is written as NIfTI under a cache folder and read back afterwards.
Phantom kinds map to classes: normal -> Normal, pneumonia -> Pneumonia, covid -> COVID-19.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

KIND_TO_CLASS = {"normal": "Normal", "pneumonia": "Pneumonia", "covid": "COVID-19"}


@dataclass(frozen=True)
class PhantomFiles:
    kind: str
    seed: int
    image: Path
    truth: Path

    @property
    def case_id(self) -> str:
        return f"phantom-{self.kind}-{self.seed}"


def parse_seeds(text: str) -> list[int]:
    """``"0-9,20,30-31"`` -> [0..9, 20, 30, 31]."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            seeds += list(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"seeds {text!r}: expected e.g. '0-9' or '1,2,5'")
    return seeds


def _tag(spacing: float | None, size: int | None) -> str:
    return f"sp{spacing:g}" if spacing else (f"sz{size}" if size else "native")


def phantom_files(kind: str, seed: int, cache_dir: str | Path, spacing: float | None = None,
                  size: int | None = None) -> PhantomFiles:
    """Image and truth of one phantom as NIfTI files in ``cache_dir`` (made on first use).

    ``spacing`` (isotropic mm) or ``size`` (voxels a side) force the grid; otherwise the
    phantom's own seed-dependent grid is used.
    """
    from CovidCTAnalysisLib.phantom import KINDS, make_phantom

    if kind not in KINDS:
        raise ValueError(f"phantom kind {kind!r}; expected one of {KINDS}")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"phantom_{kind}_{seed}_{_tag(spacing, size)}"
    image_path, truth_path = cache / f"{stem}_ct.nii.gz", cache / f"{stem}_truth.nii.gz"
    if not (image_path.is_file() and truth_path.is_file()):
        kwargs = {}
        if spacing:
            kwargs["spacing"] = (float(spacing),) * 3
        if size:
            kwargs["size"] = (int(size),) * 3
        ph = make_phantom(kind, seed, **kwargs)
        # write then rename, so a half-written cache file is never read back
        for img, path in ((ph.image, image_path), (ph.truth, truth_path)):
            tmp = path.with_name(f".{os.getpid()}.{path.name}")
            sitk.WriteImage(img, str(tmp), True)
            os.replace(tmp, path)
    return PhantomFiles(kind=kind, seed=seed, image=image_path, truth=truth_path)


def phantom_set(kinds: list[str], seeds: list[int], cache_dir: str | Path, spacing: float | None = None,
                size: int | None = None, log=None) -> list[PhantomFiles]:
    """All (kind, seed) phantoms, generating the missing ones (with a progress line each)."""
    out = []
    total = len(kinds) * len(seeds)
    for seed in seeds:
        for kind in kinds:
            if log is not None:
                log("phantoms", f"phantom {len(out) + 1}/{total}: {kind} seed {seed}")
            out.append(phantom_files(kind, seed, cache_dir, spacing=spacing, size=size))
    return out
