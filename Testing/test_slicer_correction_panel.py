"""The "Correct lesions" logic (``CovidCTAnalysisSlicer.correction_panel.LesionCorrection``) against the real MRML
libraries (slicer-core) and a real worker subprocess with a tiny trained interactive model: points placed in RAS
reach the worker as LPS clicks, its answer updates the lesion segment and the statistics table in place, Undo
restores them, a click outside the image is refused, and the worker ends with the scene or with Cancel."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()
MODULE = Path(__file__).resolve().parents[1] / "CovidCTAnalysis"
sys.path.insert(0, str(MODULE))

from CovidCTAnalysisLib.constants import LESION  # noqa: E402
from CovidCTAnalysisSlicer import segmentations, tables, volumes  # noqa: E402
from CovidCTAnalysisSlicer.correction_panel import LesionCorrection  # noqa: E402
from CovidCTAnalysisSlicer.correction_worker import CorrectionWorker  # noqa: E402
from slicer_scene import newScene  # noqa: E402


@pytest.fixture()
def panel(tiny_interactive_models, tmp_path):
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    ph = make_phantom("covid", 7, size=(64, 56, 24))
    scene = newScene()
    volume = volumes.addVolumeNodeFromSitkImage(scene, ph.image, "ct")
    seg = segmentations.segmentationNodeFromLabelmap(scene, ph.truth, "ct result", volume)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "ct statistics")
    add = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Add lesion")
    remove = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Remove lesion")
    started = []

    def startWorker():
        started.append(CorrectionWorker.start(sys.executable, MODULE, modelsDir=str(tiny_interactive_models),
                                              device="cpu"))
        return started[-1]

    statuses: list[str] = []
    correction = LesionCorrection(volume, seg, table, add, remove, startWorker, statuses.append, tempRoot=tmp_path)
    yield scene, ph, correction, add, remove, statuses, started
    for worker in started:
        worker.cancel()


def ras_of(image: sitk.Image, labels: np.ndarray, label: int) -> list[float]:
    zz, yy, xx = np.nonzero(labels == label)
    k = len(zz) // 2
    x, y, z = image.TransformIndexToPhysicalPoint((int(xx[k]), int(yy[k]), int(zz[k])))
    return [-x, -y, z]


def wait_for(correction: LesionCorrection, op: str) -> dict:
    while True:
        answer = correction.wait(timeout=180)
        if answer.get("op") == op:
            return answer


def test_points_refine_through_the_worker_update_in_place_and_undo(panel):
    scene, ph, correction, add, remove, statuses, started = panel
    labels = sitk.GetArrayFromImage(ph.truth)
    before = sitk.GetArrayFromImage(correction.edits.currentLabelmap())
    assert correction.worker is None  # nothing starts before the section is used

    ras = ras_of(ph.image, labels, LESION)
    remove.AddControlPoint(*ras, "R1")  # PointPositionDefinedEvent → the click is sent
    assert len(started) == 1 and correction.pending
    answer = wait_for(correction, "click")
    assert answer["ok"], answer
    assert answer["kind"] == "remove" and np.allclose(answer["lps_mm"], [-ras[0], -ras[1], ras[2]], atol=1e-3)
    after = sitk.GetArrayFromImage(correction.edits.currentLabelmap())
    assert int((after != before).sum()) == answer["changed_voxels"]
    assert int((after == LESION).sum()) == answer["lesion_voxels"]
    rows = tables.rowsFromTableNode(correction.tableNode)
    lesion_row = next(r for r in rows if r["Segment"] == "Lesion")
    answer_row = next(s for s in answer["segments"] if s["label"] == LESION)
    assert lesion_row["Volume"] == pytest.approx(answer_row["volume_ml"])
    assert "voxels changed" in statuses[-1] and remove.GetNumberOfControlPoints() == 1

    assert correction.undo()
    assert np.array_equal(sitk.GetArrayFromImage(correction.edits.currentLabelmap()), before)
    assert remove.GetNumberOfControlPoints() == 0  # the undone click's point goes too
    undone = wait_for(correction, "undo")
    assert undone["ok"] and undone["lesion_voxels"] == int((before == LESION).sum())
    lesion_row = next(r for r in tables.rowsFromTableNode(correction.tableNode) if r["Segment"] == "Lesion")
    assert lesion_row["Volume"] == pytest.approx(next(s for s in undone["segments"] if s["label"] == LESION)["volume_ml"])
    assert not correction.undo() and statuses[-1] == "Nothing to undo."

    add.AddControlPoint(5000.0, 0.0, 0.0, "far away")
    refused = wait_for(correction, "click")
    assert not refused["ok"] and "outside the image" in refused["error"]
    assert statuses[-1].startswith("Refused:") and "outside the image" in statuses[-1]
    assert add.GetNumberOfControlPoints() == 0  # the refused point is removed: the lists hold applied clicks only
    assert np.array_equal(sitk.GetArrayFromImage(correction.edits.currentLabelmap()), before)
    assert correction.worker.alive and len(started) == 1  # the same worker serves on


def test_the_worker_shuts_down_when_the_scene_closes(panel):
    scene, ph, correction, add, remove, statuses, started = panel
    add.AddControlPoint(*ras_of(ph.image, sitk.GetArrayFromImage(ph.truth), 1), "A1")
    wait_for(correction, "click")
    worker = started[0]
    scene.Clear(0)  # EndCloseEvent
    assert worker.state == "stopped" and worker._process.returncode == 0
    assert correction.workDir is None


def test_cancel_kills_the_worker(panel):
    scene, ph, correction, add, remove, statuses, started = panel
    add.AddControlPoint(*ras_of(ph.image, sitk.GetArrayFromImage(ph.truth), 2), "A1")
    correction.cancel()  # before the model has even loaded
    assert started[0].state == "cancelled" and started[0]._process.returncode not in (None, 0)
    assert add.GetNumberOfControlPoints() == 0 and "cancelled" in statuses[-1]


class Recorder:
    """A stand-in for a Qt widget or timer: records connections and calls, holds properties."""

    def __init__(self, **properties) -> None:
        self.__dict__.update(properties)
        self.connections, self.calls = {}, []

    def connect(self, signal, slot=None) -> None:  # PythonQt: widget.connect(signal, slot); timer.timeout.connect(slot)
        self.connections[signal if slot is not None else "()"] = slot if slot is not None else signal

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


def test_section_binds_point_lists_to_the_current_result_and_follows_a_new_one():
    from CovidCTAnalysisSlicer.correction_panel import CorrectionSection

    scene = newScene()
    img = sitk.Image((12, 10, 6), sitk.sitkInt16) - 800
    lab = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    lab[2:6, 2:8, 1:5] = 1
    lab[6:10, 2:8, 1:5] = 2
    lab.CopyInformation(img)
    volume = volumes.addVolumeNodeFromSitkImage(scene, img, "ct")
    first = segmentations.segmentationNodeFromLabelmap(scene, lab, "first", volume)
    current = {"seg": None}
    ui = type("Ui", (), {})()
    for name in ("correctLesionsCollapsibleButton", "undoCorrectionButton", "cancelButton", "addLesionPlaceWidget",
                 "removeLesionPlaceWidget", "correctionStatusLabel"):
        setattr(ui, name, Recorder(collapsed=False, text="", enabled=False))
    timer = Recorder()
    timer.timeout = Recorder()
    section = CorrectionSection(ui, lambda: (volume, current["seg"], None), lambda: pytest.fail("no worker yet"), timer)
    assert set(ui.correctLesionsCollapsibleButton.connections) == {"contentsCollapsed(bool)"}
    section.onCollapsed(False)
    assert section.correction is None and "Analyze" in ui.correctionStatusLabel.text

    current["seg"] = first
    section.onCollapsed(False)
    assert section.correction.segmentationNode is first and ("start", ()) in timer.calls
    addNode = next(n for n, k in section.correction.kinds.items() if k == "add")
    assert ("setCurrentNode", (addNode,)) in ui.addLesionPlaceWidget.calls and "first" in addNode.GetName()

    current["seg"] = second = segmentations.segmentationNodeFromLabelmap(scene, lab, "second", volume)
    section.poll()  # a new result: the section rebinds to it
    assert section.correction.segmentationNode is second
    section.close()
    assert section.correction is None and ("stop", ()) in timer.calls
