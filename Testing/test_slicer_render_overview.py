"""tools/render_overview.py draws the README picture off-screen: three views, segments in their colours."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "CovidCTAnalysis"))

import render_overview  # noqa: E402
from CovidCTAnalysisLib import constants  # noqa: E402


def test_overview_png_is_drawn_with_all_segments(tmp_path):
    from CovidCTAnalysisLib.phantom.generator import make_phantom
    from PIL import Image

    phantom = make_phantom("covid", 3, size=(96, 96, 48))
    out = tmp_path / "overview.png"
    try:
        render_overview.renderOverview(phantom.image, phantom.truth, "synthetic phantom", "Research use, not for "
                                       "diagnosis.", out)
    except render_overview.RenderingUnavailable as e:
        pytest.skip(f"no off-screen OpenGL here: {e}")
    assert 0 < out.stat().st_size < render_overview.MAX_BYTES
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape[0] > 400 and picture.shape[1] > 1000
    # Each segment colour shows up: in the opaque 3-D lesion and the legend at least.
    for label, term in constants.TERMINOLOGY.items():
        close = np.abs(picture - np.array(term.color_rgb)).sum(axis=2) < 30
        assert close.sum() > 50, f"{constants.LABEL_NAMES[label]} colour is missing from the picture"
    # The 3-D panel (right third) holds a rendered, non-uniform image.
    right = picture[60:-100, 2 * picture.shape[1] // 3:]
    assert right.std() > 10


def test_render3d_shows_lesion_colour():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 3:14] = constants.RIGHT_LUNG
    labels[5:25, 5:25, 16:27] = constants.LEFT_LUNG
    labels[12:18, 12:18, 20:26] = constants.LESION
    try:
        rgb = render_overview.render3d(labels, size=(200, 200))
    except render_overview.RenderingUnavailable as e:
        pytest.skip(f"no off-screen OpenGL here: {e}")
    assert rgb.shape == (200, 200, 3)
    # The lesion is opaque in front of the translucent left lung: its red dominates somewhere.
    red = (rgb[..., 0].astype(int) - rgb[..., 1].astype(int)) > 60
    assert red.sum() > 20


def test_committed_overview_is_small_and_present():
    path = REPO / "Resources" / "Screenshots" / "overview.png"
    assert path.is_file() and path.stat().st_size < 500_000
