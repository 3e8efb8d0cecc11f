"""Synthetic chest phantoms for training, cached on disk.

``make_phantom`` (the core's ``phantom/generator.py``) is deterministic for a seed and a
``PHANTOM_VERSION``, so a phantom generated once is written as NIfTI under a cache folder (the
version in its name) and read back afterwards.
Phantom kinds map to classes: normal -> Normal, pneumonia -> Pneumonia, covid -> COVID-19.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from training.parallel import map_processes, worker_count

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


def _paths(kind: str, seed: int, cache_dir: str | Path, spacing: float | None, size: int | None) -> tuple[Path, Path]:
    """The cache files of one phantom. The name carries the generator's ``PHANTOM_VERSION``, which changes
    whenever a seed's output changes, so phantoms of an older generator are never read back."""
    from CovidCTAnalysisLib.phantom import generator

    stem = Path(cache_dir) / f"phantom_v{generator.PHANTOM_VERSION}_{kind}_{seed}_{_tag(spacing, size)}"
    return Path(f"{stem}_ct.nii.gz"), Path(f"{stem}_truth.nii.gz")


def phantom_files(kind: str, seed: int, cache_dir: str | Path, spacing: float | None = None,
                  size: int | None = None) -> PhantomFiles:
    """Image and truth of one phantom as NIfTI files in ``cache_dir`` (made on first use).

    ``spacing`` (isotropic mm) or ``size`` (voxels a side) force the grid; otherwise the
    phantom's own seed-dependent grid is used.
    """
    from CovidCTAnalysisLib.files import atomic_path
    from CovidCTAnalysisLib.phantom.generator import KINDS, make_phantom

    if kind not in KINDS:
        raise ValueError(f"phantom kind {kind!r}; expected one of {KINDS}")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    image_path, truth_path = _paths(kind, seed, cache_dir, spacing, size)
    if not (image_path.is_file() and truth_path.is_file()):
        kwargs = {}
        if spacing:
            kwargs["spacing"] = (float(spacing),) * 3
        if size:
            kwargs["size"] = (int(size),) * 3
        ph = make_phantom(kind, seed, **kwargs)
        # write then rename, so a half-written cache file is never read back
        for img, path in ((ph.image, image_path), (ph.truth, truth_path)):
            with atomic_path(path) as tmp:
                sitk.WriteImage(img, str(tmp), True)
    return PhantomFiles(kind=kind, seed=seed, image=image_path, truth=truth_path)


def phantom_set(kinds: list[str], seeds: list[int], cache_dir: str | Path, spacing: float | None = None,
                size: int | None = None, log=None, workers: int | None = None) -> list[PhantomFiles]:
    """All (kind, seed) phantoms, generating the missing ones (with a progress line each).

    Missing phantoms are made by ``workers`` processes (default: one per CPU core): a phantom takes
    about a second of one core, and ``make demo`` needs 87 of them on its first run.
    """
    pairs = [(kind, seed) for seed in seeds for kind in kinds]
    total = len(pairs)
    done: dict[tuple[str, int], PhantomFiles] = {}
    missing = []
    for kind, seed in pairs:
        if all(path.is_file() for path in _paths(kind, seed, cache_dir, spacing, size)):
            done[(kind, seed)] = phantom_files(kind, seed, cache_dir, spacing=spacing, size=size)
        else:
            missing.append((kind, seed))
    if log is not None and done:
        log("phantoms", f"{len(done)}/{total} phantoms already in {cache_dir}")
    n = worker_count(len(missing), workers)

    def made(_i, job, files):
        done[job[:2]] = files
        if log is not None:
            log("phantoms", f"phantom {len(done)}/{total}: {job[0]} seed {job[1]}"
                            + (f" ({n} processes)" if n > 1 else ""))

    map_processes(phantom_files, [(kind, seed, cache_dir, spacing, size) for kind, seed in missing], n, made)
    return [done[pair] for pair in pairs]
