"""One click → an updated labelmap, with a loaded interactive model.

For each click, in order:

1. the ROI box around it (``roi.roi_box``: ``roi_size`` × ``spacing_mm`` of the model);
2. the box resampled onto the model grid and scaled like the segmenter's input
   (``transforms.segmenter_preprocess``; SimpleITK resamples all three axes, so the slice axis is
   never left at its own spacing as happens when MONAI's ``Spacingd`` runs before a channel exists);
3. guidance maps of every click so far that falls in the box (``guidance.network_input``);
4. sliding-window inference (``inference.segment.predict_probabilities``) and the lesion mapped back
   to the input grid (``inference.segment.probabilities_to_labels``);
5. ``merge.merge_lesion``: only the lesion label changes, only in the box and the lungs;
6. the edges of the lesion pieces that the click changed snap onto the half-way HU, within the box
   (``inference.lesion_edges``, as ``covidct analyze`` does after the segmenter): the model draws on
   2.5 mm voxels, and without it a click's redrawn piece undid the finer edges of the automatic outline
   (robot user from the demo segmenter's start: Dice after 3 clicks fell from 0.915 to 0.898 on one case);
   skipped when the interactive model's metadata says ``preprocessing.lesion_edges: false``.

``Refiner`` keeps the image, the labels and the model between clicks (the CLI, the robot
evaluation and the latency benchmark use it); ``refine`` runs a list of clicks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from CovidCTAnalysisLib.constants import BACKGROUND, LESION
from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.inference.lesion_edges import snap_lesion_edges
from CovidCTAnalysisLib.inference.segment import predict_probabilities, probabilities_to_labels
from CovidCTAnalysisLib.interactive.clicks import Click, check_clicks
from CovidCTAnalysisLib.interactive.guidance import grid_index, network_input
from CovidCTAnalysisLib.interactive.merge import CLICK_REACH_MM, DEFAULT_RULE, RULES, merge_lesion
from CovidCTAnalysisLib.interactive.roi import Box, crop, roi_box
from CovidCTAnalysisLib.loading.volume import labelmap_like
from CovidCTAnalysisLib.models.folder import LoadedModel
from CovidCTAnalysisLib.models.interactive_settings import interactive_settings
from CovidCTAnalysisLib.models.transforms import segmenter_preprocess

# A click's network runs on one ROI (40^3 voxels): measured on the 2-core machine (benchmarks/bench_refine.py,
# 512x512x300, load 1.4-1.7), one torch thread took a median 0.06 s per click and two threads 1.06 s (intra-op
# threads on tensors this small cost more than they give). So a click runs on CLICK_THREADS on the CPU.
CLICK_THREADS = 1


@dataclass(frozen=True)
class RefineStep:
    """What one click did: its ROI box (x0, y0, z0, x1, y1, z1) and how many voxels changed."""

    click: Click
    box: Box
    changed_voxels: int
    seconds: float

    def as_report(self) -> dict:
        return {**self.click.as_report(), "roi_box_xyz": list(self.box), "changed_voxels": self.changed_voxels,
                "seconds": round(self.seconds, 3)}


class Refiner:
    """``image`` (HU) and its ``labelmap`` (1/2/3) held with an interactive model between clicks.

    ``earlier``: clicks of previous sessions (from ``report.json``); they guide later clicks in
    the same ROI but are not re-applied. ``rule``: ``merge.RULES`` (``click_kind``: an add click only
    adds lesion, a remove click only removes it; ``click_region``: and only the piece at the click;
    ``redraw``: the ROI takes the model's lesion).
    """

    def __init__(self, image: sitk.Image, labelmap: sitk.Image, model: LoadedModel,
                 device: torch.device | str = "cpu", earlier: Sequence[Click] = (), rule: str = DEFAULT_RULE) -> None:
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}; expected one of {RULES}")
        self.rule = rule
        meta = model.metadata
        if meta.task != "interactive":
            raise ModelError(f"model {meta.id} is a {meta.task} model; refining needs an interactive model")
        if labelmap.GetSize() != image.GetSize():
            raise ValueError(f"labelmap size {labelmap.GetSize()} differs from image size {image.GetSize()}")
        self.image, self.model, self.device = image, model, torch.device(device)
        self.p = interactive_settings(meta.preprocessing)
        self.labels = sitk.GetArrayFromImage(labelmap).astype(np.uint8)
        self.clicks: list[Click] = list(earlier)
        self.roi_mm = [float(r) * float(s) for r, s in zip(self.p["roi_size"], self.p["spacing_mm"], strict=True)]
        self.four_channels = "lesion" in self.p["channels"]

    def check(self, clicks: Sequence[Click]) -> None:
        """Refuse clicks outside the image and positive clicks outside the lungs (before any change)."""
        check_clicks(self.image, self.labels, list(clicks))

    def lesion_probability(self, box: Box) -> tuple[np.ndarray, sitk.Image]:
        """Lesion mask (bool, the box's (z, y, x) shape) that the model draws in ``box`` with the clicks so far."""
        sub = crop(self.image, box)
        x0, y0, z0, x1, y1, z1 = box
        current = None
        if self.four_channels:
            current = labelmap_like((self.labels[z0:z1, y0:y1, x0:x1] == LESION).astype(np.uint8), sub)
        prep = segmenter_preprocess(sub, self.p, label=current)
        pos = [grid_index(prep.grid, c.lps) for c in self.clicks if c.positive]
        neg = [grid_index(prep.grid, c.lps) for c in self.clicks if not c.positive]
        x = network_input(prep.image, pos, neg, self.p, prep.label)
        probs = predict_probabilities(torch.from_numpy(x)[None], self.model, self.p, self.device).numpy()
        ref = sitk.Image(sub.GetSize(), sitk.sitkUInt8)
        ref.CopyInformation(sub)
        lesion = probabilities_to_labels(probs, prep.grid, ref, {0: BACKGROUND, 1: LESION}) == LESION
        return lesion, sub

    def click(self, click: Click) -> RefineStep:
        """Apply one click; the labels change only as ``merge.merge_lesion`` allows."""
        t = time.perf_counter()
        self.check([click])
        self.clicks.append(click)
        box = roi_box(self.image, [click.lps], self.roi_mm)
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(CLICK_THREADS)
        try:
            lesion, _ = self.lesion_probability(box)
        finally:
            torch.set_num_threads(threads)
        only = click.kind if self.rule in ("click_kind", "click_region") else None
        at = None
        if self.rule == "click_region":
            at = self.image.TransformPhysicalPointToIndex(tuple(float(v) for v in click.lps))[::-1]
        reach = tuple(CLICK_REACH_MM / s for s in self.image.GetSpacing()[::-1])
        x0, y0, z0, x1, y1, z1 = box
        sub = self.labels[z0:z1, y0:y1, x0:x1]
        before = sub == LESION
        merge_lesion(self.labels, lesion, box, only=only, at_zyx=at, reach_voxels=reach)
        touched = before != (sub == LESION)
        if touched.any() and self.p["lesion_edges"]:
            hu = sitk.GetArrayViewFromImage(self.image)[z0:z1, y0:y1, x0:x1]
            # the pieces that gained voxels, and those next to voxels a remove click took away
            snap_lesion_edges(sub, hu, self.image.GetSpacing()[::-1], only_near=ndimage.binary_dilation(touched))
        changed = int((before != (sub == LESION)).sum())
        return RefineStep(click, box, changed, time.perf_counter() - t)

    def labelmap(self) -> sitk.Image:
        return labelmap_like(self.labels.copy(), self.image)


def refine(image: sitk.Image, labelmap: sitk.Image, clicks: Sequence[Click], model: LoadedModel,
           device: torch.device | str = "cpu", earlier: Sequence[Click] = ()) -> tuple[sitk.Image, list[RefineStep]]:
    """All ``clicks`` applied in order (every one checked first); the new labelmap and the steps."""
    refiner = Refiner(image, labelmap, model, device, earlier)
    refiner.check(clicks)
    steps = [refiner.click(c) for c in clicks]
    return refiner.labelmap(), steps
