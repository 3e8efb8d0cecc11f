"""Seeded train/validation splits by patient (never by slice).

The paper's 70/30 split is the default. With class labels the split is stratified,
so every class keeps about the same fraction in both parts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int
    train_fraction: float

    def as_dict(self) -> dict:
        return {"rule": "by patient, stratified by class, seeded", "seed": self.seed,
                "train_fraction": self.train_fraction, "train": list(self.train), "val": list(self.val)}


def split_by_patient(patient_ids: Sequence[str], classes: Sequence[int] | None = None,
                     train_fraction: float = DEFAULT_TRAIN_FRACTION, seed: int = 0) -> Split:
    """Split unique patient ids into train/val with a seeded shuffle.

    ``classes`` (one per id, optional) stratifies the split. Each stratum with at least
    two patients gives at least one to each side; a lone patient goes to training. The result does not depend on the
    order of ``patient_ids``.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction}; expected a number between 0 and 1 (e.g. 0.7)")
    ids = list(patient_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("patient_ids contains duplicates; pass one entry per patient")
    if classes is not None and len(classes) != len(ids):
        raise ValueError(f"{len(classes)} classes for {len(ids)} patients; expected one class per patient")
    strata: dict[int, list[str]] = defaultdict(list)
    for i, pid in enumerate(ids):
        strata[int(classes[i]) if classes is not None else 0].append(pid)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for key in sorted(strata):
        members = sorted(strata[key])
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n_train = int(round(train_fraction * len(members)))
        n_train = max(n_train, 1)  # a lone patient of a class trains rather than validates
        if len(members) >= 2:
            n_train = min(n_train, len(members) - 1)
        train += members[:n_train]
        val += members[n_train:]
    return Split(train=tuple(sorted(train)), val=tuple(sorted(val)), seed=seed, train_fraction=train_fraction)


def split_with_real_in_training(case_ids: Sequence[str], groups: Sequence[str], classes: Sequence[int] | None,
                                real: Sequence[bool], train_fraction: float, seed: int) -> Split | None:
    """``split_cases`` of the items that are not ``real``, with every real item added to training (at most three
    real patients, one per class: one in validation would be a patient never learned from). None when every
    item is real: the caller decides."""
    keep = [i for i, r in enumerate(real) if not r]
    if not keep:
        return None
    split = split_cases([case_ids[i] for i in keep], [groups[i] for i in keep],
                        [classes[i] for i in keep] if classes is not None else None, train_fraction, seed)
    real_ids = tuple(case_ids[i] for i, r in enumerate(real) if r)
    return Split(train=tuple(sorted(split.train + real_ids)), val=split.val, seed=seed, train_fraction=train_fraction)


def split_cases(case_ids: Sequence[str], groups: Sequence[str] | None = None, classes: Sequence[int] | None = None,
                train_fraction: float = DEFAULT_TRAIN_FRACTION, seed: int = 0) -> Split:
    """Split cases so that all cases of one patient (``groups``) fall on the same side.

    Phantoms of one seed are one synthetic patient in every kind, so their group is the seed.
    Groups are stratified by the set of classes they hold. Returns case ids.
    """
    groups = list(groups) if groups is not None else list(case_ids)
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    gids = sorted(members)
    strata = None
    if classes is not None:
        keys = [tuple(sorted({int(classes[i]) for i in members[g]})) for g in gids]
        order = sorted(set(keys))
        strata = [order.index(k) for k in keys]
    gs = split_by_patient(gids, strata, train_fraction, seed)
    pick = (lambda side: tuple(sorted(case_ids[i] for g in side for i in members[g])))  # noqa: E731
    return Split(train=pick(gs.train), val=pick(gs.val), seed=seed, train_fraction=train_fraction)
