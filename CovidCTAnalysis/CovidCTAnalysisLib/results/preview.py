"""``preview.png``: axial and coronal slices through the lesion-richest region, segments overlaid.

A picture beats a table: the user sees at a glance what was segmented and how
the case was classified. The title carries the class and probabilities, the
research-use line and a DEMO warning when any model was trained on phantoms.
Rendered with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import LABEL_NAMES, LESION, TERMINOLOGY
from CovidCTAnalysisLib.geometry import patient_axes
from CovidCTAnalysisLib.loading.volume import patient_left_axis

LUNG_WINDOW = (-1350.0, 150.0)  # display range (level -600, width 1500)
OVERLAY_ALPHA = 0.45


def _richest_index(mask: np.ndarray, axis: int) -> int | None:
    """Index along ``axis`` holding the most voxels of ``mask``; None if empty."""
    counts = mask.sum(axis=tuple(i for i in range(3) if i != axis))
    return int(np.argmax(counts)) if counts.any() else None


def choose_slices(labelmap: np.ndarray) -> tuple[int, int]:
    """(z, y): through the most lesion voxels, else the most segmented voxels, else the middle."""
    for mask in (labelmap == LESION, labelmap > 0):
        z, y = _richest_index(mask, 0), _richest_index(mask, 1)
        if z is not None:
            return z, y  # type: ignore[return-value]
    return labelmap.shape[0] // 2, labelmap.shape[1] // 2


def _overlay(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for label in LABEL_NAMES:
        sel = labels == label
        rgba[sel, :3] = np.array(TERMINOLOGY[label].color_rgb) / 255.0
        rgba[sel, 3] = OVERLAY_ALPHA
    return rgba


def write_preview(image: sitk.Image, labelmap: sitk.Image, path: str | Path, title_lines: list[str]) -> Path:
    """Render the preview PNG to ``path``; ``title_lines`` go above the two panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct = sitk.GetArrayViewFromImage(image)
    lab = sitk.GetArrayViewFromImage(labelmap)
    z, y = choose_slices(lab)
    sx, sy, sz = image.GetSpacing()
    fig = Figure(figsize=(11, 6.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    # Axial: rows = y (posterior down in LPS when direction is identity), columns = x.
    axes[0].imshow(ct[z], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=sy / sx,
                   interpolation="nearest")
    axes[0].imshow(_overlay(lab[z]), aspect=sy / sx, interpolation="nearest")
    axes[0].set_title(f"axial, slice z={z}")
    # Coronal: superior up. When increasing z index goes superior, draw with origin='lower'.
    origin = "lower" if patient_axes(image).sign[2] >= 0 else "upper"
    axes[1].imshow(ct[:, y, :], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=sz / sx,
                   origin=origin, interpolation="nearest")
    axes[1].imshow(_overlay(lab[:, y, :]), aspect=sz / sx, origin=origin, interpolation="nearest")
    axes[1].set_title(f"coronal, row y={y}")
    axis, sign = patient_left_axis(image)
    if axis == 2:  # columns run along the patient's left-right axis: mark the sides
        for ax in axes:
            for x, text in ((0.01, "L" if sign < 0 else "R"), (0.99, "R" if sign < 0 else "L")):
                ax.text(x, 0.98, text, transform=ax.transAxes, color="yellow", fontsize=12, fontweight="bold",
                        ha="left" if x < 0.5 else "right", va="top")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=np.array(TERMINOLOGY[k].color_rgb) / 255.0, label=v) for k, v in LABEL_NAMES.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("\n".join(title_lines), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.88))
    fig.savefig(str(path))
    return Path(path)
