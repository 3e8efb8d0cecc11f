"""tools/draw_panel.py draws the .ui with plain Qt (the README's panel picture), stamped as a drawing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_panel_drawing_is_made_from_the_ui(tmp_path):
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials (dev extra) is not installed")
    out = tmp_path / "panel.png"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "draw_panel.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr[-2000:]
    from PySide6.QtGui import QImage

    image = QImage(str(out))
    assert image.width() == 460 and image.height() > 600  # every section of the panel, not an empty widget
