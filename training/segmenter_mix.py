"""The segmenter's real-data parts, mixed with phantoms: ``--dataset phantoms,hybrids,weak``.

``hybrids``  Real lesion-free CT backgrounds with synthetic lesions and exact truth (``training.hybrid_cases``).
``weak``     The real COVID-CT-MD sample (``training.real_cases``: P001, cap001, normal001) as whole volumes,
             with a label volume built from the radiologists' per-slice infection labels:

             * a slice labelled clear (0; every slice of normal001) says "no lesion here": its label is the
               threshold method's lungs (1 left, 2 right, ``threshold.lungs.segment_lungs``) and 0 elsewhere,
               so a lesion predicted there is penalised (a negative constraint);
             * a slice labelled infected (1) has an unknown lesion outline: every voxel of it gets
               ``IGNORE_LABEL`` (255), and the loss (``MaskedDiceCELoss``) leaves those voxels out.

             Patch centres are drawn from a copy of the label in which ``IGNORE_LABEL`` is background
             (``ignore_aware_crops``), so the foreground centres lie in lungs of clear slices; a patch may still
             reach into ignored slices, which then simply do not count.

Every case of one real patient (its weak case and all hybrids on its backgrounds) has the group ``real-<patient>``;
``--real-exclude`` leaves patients out of both parts (leave-one-patient-out). Which side of the split real patients
go to: training, always, when the mix also has phantoms (``split_real_in_training``): there are at most three, and
a real patient in validation would be one the model never learns from. Real patients are evaluated by training
without them (``--real-exclude``). A mix of real parts only is split by patient as usual (else no validation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.threshold.lungs import segment_lungs

from training.real_cases import REAL_GROUP_PREFIX, covid_ct_md_sample, real_group
from training.segmenter_data import IGNORE_LABEL, SegCase
from training.splits import Split, split_cases, split_with_real_in_training

WEAK_VERSION = "1"  # bump when a weak label volume changes: the cache keys on it
SAMPLE_KEY = "sample_label"


def weak_label_volume(lungs: np.ndarray, slice_labels) -> np.ndarray:
    """(z, y, x) uint8: the threshold lungs on clear slices, ``IGNORE_LABEL`` on every voxel of infected slices."""
    infected = np.asarray(slice_labels, dtype=bool)
    if infected.shape != (lungs.shape[0],):
        raise ValueError(f"{infected.size} slice labels for {lungs.shape[0]} slices; expected one per z")
    out = lungs.astype(np.uint8).copy()
    if (out == LESION).any():
        raise ValueError("the threshold lungs hold lesion labels; expected 1 (left) / 2 (right) only")
    out[infected] = IGNORE_LABEL
    return out


def weak_seg_cases(shared_data: Path, cache_dir: Path, exclude: frozenset[str] | set[str] = frozenset(),
                   log=None) -> list[SegCase]:
    """The real sample minus ``exclude`` as segmenter cases; label volumes cached as NIfTI beside the others."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for real in covid_ct_md_sample(Path(shared_data), exclude):
        label_path = cache_dir / f"weak_v{WEAK_VERSION}_{real.patient}_label.nii.gz"
        if not label_path.is_file():
            image = sitk.ReadImage(str(real.image_path))
            lungs = sitk.GetArrayFromImage(segment_lungs(image))
            slice_labels = real.labels_or_clear(image.GetSize()[2])
            label = sitk.GetImageFromArray(weak_label_volume(lungs, slice_labels))
            label.CopyInformation(image)
            sitk.WriteImage(label, str(label_path), True)
            if log is not None:
                log("weak", f"weak labels {real.patient}: {sum(slice_labels)} of {len(slice_labels)} slices ignored")
        # lungs_labelled False: the lung box comes from the threshold lungs of every slice, infected ones too
        cases.append(SegCase(f"weak-{real.patient}", real.image_path, label_path, "weak", False,
                             group=real_group(real.patient)))
    return cases


def is_real(case: SegCase) -> bool:
    return case.group.startswith(REAL_GROUP_PREFIX)


def split_real_in_training(cases: list[SegCase], train_fraction: float, seed: int) -> Split:
    """Patient-level split of the synthetic cases (``splits.split_cases``), every real patient's cases in training;
    with no synthetic case, the usual split of all (module doc)."""
    ids, groups = [c.case_id for c in cases], [c.group for c in cases]
    split = split_with_real_in_training(ids, groups, None, [is_real(c) for c in cases], train_fraction, seed)
    return split or split_cases(ids, groups, None, train_fraction, seed)


def part_summary(cases: list[SegCase], excluded, **extra) -> dict:
    """One part's entry in the metadata's ``dataset.mix``."""
    return {"cases": len(cases), "patients": sorted({c.group for c in cases}), "real_excluded": sorted(excluded),
            **extra}


class MaskedDiceCELoss(torch.nn.Module):
    """Dice + cross-entropy over the voxels whose label is not ``IGNORE_LABEL``: MONAI's ``MaskedDiceLoss`` (softmax
    first, then the mask) and torch's cross-entropy with ``ignore_index``. Ignored voxels get zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import MaskedDiceLoss

        self.dice = MaskedDiceLoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = target != IGNORE_LABEL
        if not known.any():  # a patch wholly inside ignored slices teaches nothing
            return logits.sum() * 0.0
        dice = self.dice(logits, torch.where(known, target, torch.zeros_like(target)), mask=known)
        ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), ignore_index=IGNORE_LABEL)
        return dice + ce


def ignore_aware_crops(train_tf):
    """The training transforms with the patch sampler reading a copy of the label where ``IGNORE_LABEL`` is
    background (RandCropByLabelClassesd would fail on 255; pos/neg sampling would centre on ignored slices)."""
    from monai.transforms import (
        Compose,
        CopyItemsd,
        DeleteItemsd,
        Lambdad,
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
    )

    ops = []
    for t in train_tf.transforms:
        if isinstance(t, (RandCropByLabelClassesd, RandCropByPosNegLabeld)):
            t.label_key = SAMPLE_KEY
            ops += [CopyItemsd(keys="label", names=SAMPLE_KEY),
                    Lambdad(keys=SAMPLE_KEY, func=lambda y: torch.where(torch.as_tensor(y) == IGNORE_LABEL, 0,
                                                                         torch.as_tensor(y))),
                    t, DeleteItemsd(keys=SAMPLE_KEY)]
        else:
            ops.append(t)
    if len(ops) != len(train_tf.transforms) + 3:
        raise RuntimeError("expected exactly one patch sampler in the segmenter training transforms")
    return Compose(ops)
