"""Draw the module panel from its .ui file with plain Qt (PySide6, offscreen): a DRAWING, not a Slicer screenshot.

    QT_QPA_PLATFORM=offscreen python tools/draw_panel.py [--out Resources/Screenshots/panel-drawing.png]

Slicer's widget classes (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLTableView, qMRMLWidget,
qSlicerMarkupsPlaceWidget) are replaced by plain Qt stand-ins (a group box, a combo box, a table, a widget, a tool
button) before loading; the combo boxes get the panel's
own choices (CovidCTAnalysisSlicer.models) and the labels the texts shown with no model installed. The picture
is stamped "Drawing of the .ui with plain Qt - not a Slicer screenshot".
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
UI_FILE = MODULE / "Resources" / "UI" / "CovidCTAnalysis.ui"
STAND_INS = {"ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox", "qMRMLTableView": "QTableWidget",
             "qMRMLWidget": "QWidget", "qSlicerMarkupsPlaceWidget": "QToolButton"}
STAMP = "DRAWING of the .ui (plain Qt stand-ins), not a Slicer screenshot"


def plainQtUi() -> str:
    """The .ui text with Slicer classes replaced and their custom-widget declarations and properties dropped."""
    text = UI_FILE.read_text(encoding="utf-8")
    text = re.sub(r"<customwidgets>.*?</customwidgets>", "", text, flags=re.S)
    text = re.sub(r"<connections>.*?</connections>", "", text, flags=re.S)
    for slicerClass, qtClass in STAND_INS.items():
        text = text.replace(f'class="{slicerClass}"', f'class="{qtClass}"')
    # Properties the stand-ins do not have (nodeTypes, collapsed, ...) are dropped; the group boxes keep their title.
    text = re.sub(r'<property name="(nodeTypes|showChildNodeTypes|addEnabled|removeEnabled|noneEnabled|noneDisplay|'
                  r'collapsed|SlicerParameterName)"( stdset="0")?>.*?</property>', "", text, flags=re.S)
    return re.sub(r'(<widget class="QGroupBox" name="\w+">\s*<property name=)"text"', r'\1"title"', text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots" / "panel-drawing.png")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(MODULE))
    from CovidCTAnalysisSlicer.models import DEVICE_CHOICES, METHOD_CHOICES, SEGMENT_CHOICES, methodWithoutModels
    from PySide6.QtCore import QFile
    from PySide6.QtGui import QColor, QPainter
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QLabel

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "panel.ui"
        path.write_text(plainQtUi(), encoding="utf-8")
        handle = QFile(str(path))
        handle.open(QFile.ReadOnly)
        panel = QUiLoader().load(handle)
        handle.close()
    if panel is None:
        raise SystemExit(f"Qt could not load {UI_FILE}")
    fill = {"methodComboBox": list(METHOD_CHOICES), "deviceComboBox": list(DEVICE_CHOICES),
            "segmentPolicyComboBox": list(SEGMENT_CHOICES), "inputVolumeSelector": ["chest CT"],
            "referenceSegmentationSelector": ["(none: no Dice/HD95)"]}
    for name, items in fill.items():
        panel.findChild(QComboBox, name).addItems(items)
    panel.findChild(QComboBox, "methodComboBox").setCurrentIndex(list(METHOD_CHOICES).index(
        methodWithoutModels(["no model"])[0]))
    noModels = ["No classification model is installed in ~/.cache/covidct/models.",
                "No segmentation model is installed in ~/.cache/covidct/models."]
    panel.findChild(QLabel, "modelsInfoLabel").setText(methodWithoutModels(noModels)[1])
    panel.findChild(QLabel, "modelsLocationLabel").setText("~/.cache/covidct/models")
    panel.resize(460, 100)
    panel.adjustSize()
    panel.resize(460, panel.sizeHint().height())
    image = panel.grab().toImage()
    painter = QPainter(image)
    painter.fillRect(0, image.height() - 22, image.width(), 22, QColor(255, 244, 200))
    painter.setPen(QColor(120, 60, 0))
    painter.drawText(6, image.height() - 7, STAMP)
    painter.end()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(args.out)):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out} ({image.width()}x{image.height()})")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
