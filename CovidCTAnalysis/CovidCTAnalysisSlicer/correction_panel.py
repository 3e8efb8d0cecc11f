"""The "Correct lesions" section: each placed point refines at once through the persistent worker; Undo.

``LesionCorrection`` holds the logic and takes node objects (tested against slicer-core, no Qt): it
observes the *Add lesion* / *Remove lesion* point lists (``PointPositionDefinedEvent``), starts the
worker (``correction_worker.CorrectionWorker``) on the first placed point, writing the volume and the
current segmentation for it, sends each point as an LPS click, and on the answer writes the corrected
labelmap into the segments (``corrections.LesionEdits.apply``) and the statistics into the table
(``tables.updateTableNodeFromReport``). A refused point (outside the image, an add point outside the
lungs: the core's messages) is removed from its list and changes nothing, so the lists hold exactly the
applied clicks; Undo restores the segments (``LesionEdits.undo``), tells the worker and removes the last
applied point. The worker is shut down on ``shutdown()`` (the module's cleanup) and when the scene
closes (``EndCloseEvent``); ``cancel()`` kills it.

``CorrectionSection`` binds the panel's widgets to it (thin; the module passes the Qt timer in).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import slicer
import vtk
from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE

from CovidCTAnalysisSlicer.correction_worker import CorrectionWorker
from CovidCTAnalysisSlicer.corrections import LesionEdits, clickFromControlPoint
from CovidCTAnalysisSlicer.models import DEVICE_CHOICES
from CovidCTAnalysisSlicer.tables import updateTableNodeFromReport
from CovidCTAnalysisSlicer.volumes import writeVolumeNodeForCore

ADD_LIST_NAME, REMOVE_LIST_NAME = "Add lesion", "Remove lesion"
IMAGE_FILE, LABELMAP_FILE = "image.nrrd", "labelmap.nrrd"


class LesionCorrection:
    """Corrections of one result (volume, segmentation, table) with two point lists and a worker.

    ``startWorker()`` returns a started ``CorrectionWorker`` (Slicer: PythonSlicer; tests: this Python).
    ``onStatus(text)`` is called with every status line.
    """

    def __init__(self, volumeNode, segmentationNode, tableNode, addNode, removeNode, startWorker: Callable[[], Any],
                 onStatus: Callable[[str], None] | None = None, tempRoot: str | Path | None = None) -> None:
        if volumeNode is None or segmentationNode is None:
            raise ValueError("no analysis result to correct; run Analyze with segmentation first")
        self.volumeNode, self.segmentationNode, self.tableNode = volumeNode, segmentationNode, tableNode
        self.kinds = {addNode: ADD, removeNode: REMOVE}
        self.startWorker, self.onStatus = startWorker, onStatus or (lambda text: None)
        self.tempRoot = tempRoot
        self.edits = LesionEdits(segmentationNode, volumeNode)
        self.worker = None
        self.workDir: Path | None = None
        self.status = ""
        self.pending: dict[int, tuple[Any, str]] = {}  # request id -> (point list, control point id)
        self.applied: list[tuple[Any, str]] = []  # in order, for Undo
        self._handled: set[tuple[int, str]] = set()
        self._observations = [(node, node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                                      self._onPointDefined)) for node in (addNode, removeNode)]
        scene = segmentationNode.GetScene()
        self._observations.append((scene, scene.AddObserver(scene.EndCloseEvent, lambda caller, event: self.shutdown())))

    def _say(self, text: str) -> None:
        self.status = text
        self.onStatus(text)

    @vtk.calldata_type(vtk.VTK_INT)
    def _onPointDefined(self, markupsNode, event, index) -> None:
        self.placePoint(markupsNode, int(index))

    def placePoint(self, markupsNode, index: int) -> int | None:
        """Send control point ``index`` of ``markupsNode`` to the worker; the request id (None if not sent)."""
        pointId = markupsNode.GetNthControlPointID(index)
        if (id(markupsNode), pointId) in self._handled:
            return None
        self._handled.add((id(markupsNode), pointId))
        click = clickFromControlPoint(markupsNode, index, self.kinds[markupsNode])
        try:
            self.ensureWorker()
            requestId = self.worker.send({"op": "click", "kind": click.kind, "lps": list(click.lps),
                                          "source": click.source,
                                          "output": str(self.workDir / f"corrected-{len(self._handled)}.nrrd")})
        except (OSError, RuntimeError, ValueError) as e:
            self._removePoint(markupsNode, pointId)
            self._say(f"Correction worker failed: {e}")
            return None
        self.pending[requestId] = (markupsNode, pointId)
        self._say(f"Refining: {click.describe()}…")
        return requestId

    def ensureWorker(self) -> None:
        """Start the worker and open this result in it (first use, or after it stopped)."""
        if self.worker is not None and self.worker.alive:
            return
        self.cancel(say=False)
        self.workDir = Path(tempfile.mkdtemp(prefix="CovidCTCorrect-", dir=None if self.tempRoot is None
                                             else str(self.tempRoot)))
        imagePath = writeVolumeNodeForCore(self.volumeNode, self.workDir / IMAGE_FILE)
        sitk.WriteImage(self.edits.currentLabelmap(), str(self.workDir / LABELMAP_FILE), False)
        self.edits.undoStack.clear()  # the new worker starts from the segments as they are
        self.applied.clear()
        self.worker = self.startWorker()
        self.worker.send({"op": "open", "image": str(imagePath), "labelmap": str(self.workDir / LABELMAP_FILE)})
        self._say("Starting the correction worker (loads the interactive model once)…")

    def poll(self) -> list[dict]:
        """Handle the worker's answers that arrived (never blocks); returns them."""
        if self.worker is None:
            return []
        answers = self.worker.poll()
        for answer in answers:
            self._handle(answer)
        if self.worker.state == "failed" and (self.pending or not answers):
            for markupsNode, pointId in self.pending.values():
                self._removePoint(markupsNode, pointId)
            self.pending.clear()
            self._say(f"Correction worker failed: {self.worker.errorMessage}")
        return answers

    def wait(self, timeout: float = 120.0) -> dict:
        """Block for the next answer and handle it (tests and scripts)."""
        answer = self.worker.wait(timeout)
        self._handle(answer)
        return answer

    def _handle(self, answer: dict) -> None:
        op, ok = answer.get("op"), bool(answer.get("ok"))
        if op == "ready":
            self._say(f"Correction worker ready ({answer.get('label', '')}, {answer.get('seconds')} s)" if ok
                      else f"Correction worker failed: {answer.get('error')}")
        elif op == "open" and not ok:
            self._say(f"The result could not be opened for correction: {answer.get('error')}")
        elif op == "click":
            markupsNode, pointId = self.pending.pop(answer.get("id"), (None, None))
            if not ok:
                if markupsNode is not None:
                    self._removePoint(markupsNode, pointId)
                self._say(f"Refused: {answer.get('error')}")
                return
            self.edits.apply(sitk.ReadImage(answer["output"], sitk.sitkUInt8))
            Path(answer["output"]).unlink(missing_ok=True)
            self.applied.append((markupsNode, pointId))
            self._updateTable(answer)
            self._say(f"{answer['kind'].capitalize()} click: {answer['changed_voxels']} voxels changed in "
                      f"{answer['seconds']:.2f} s")
        elif op == "undo" and ok:
            self._updateTable(answer)

    def _updateTable(self, answer: dict) -> None:
        # Dice/HD95 against a reference are not recomputed after an edit, so the table leaves them out.
        if self.tableNode is not None:
            updateTableNodeFromReport(self.tableNode, {"segments": answer["segments"],
                                                       "statistics": {"lesion_percent": answer["lesion_percent"]}})

    def undo(self) -> bool:
        """Restore the lesion before the last applied click; False when there is none."""
        if self.pending or not self.applied or not self.edits.undo():
            self._say("Nothing to undo." if not self.pending else "Wait for the running click before undoing.")
            return False
        markupsNode, pointId = self.applied.pop()
        if self.worker is not None and self.worker.alive:
            self.worker.send({"op": "undo"})
        if markupsNode is not None:
            self._removePoint(markupsNode, pointId)
        self._say("Undone: the lesion before the last click is back.")
        return True

    def _removePoint(self, markupsNode, pointId: str) -> None:
        index = markupsNode.GetNthControlPointIndexByID(pointId)
        if index >= 0:
            markupsNode.RemoveNthControlPoint(index)

    def shutdown(self) -> None:
        """Stop the worker (it exits on its own) and delete the temp folder."""
        if self.worker is not None:
            self.worker.shutdown()
        self._cleanup()

    def cancel(self, say: bool = True) -> None:
        """Kill the worker (Cancel); clicks on their way are dropped and their points removed."""
        if self.worker is not None:
            self.worker.cancel()
            for markupsNode, pointId in self.pending.values():
                self._removePoint(markupsNode, pointId)
            self.pending.clear()
            if say:
                self._say("Correction cancelled; the worker was stopped.")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None

    def removeObservers(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []


class CorrectionSection:
    """The panel's "Correct lesions" widgets bound to a ``LesionCorrection`` made on first use.

    ``resultNodes()`` returns (volume, segmentation, table) of the current result; ``startWorker()`` starts one;
    ``timer`` is the panel's ``qt.QTimer`` that polls the worker (this package imports no Qt).
    """

    def __init__(self, ui, resultNodes: Callable[[], tuple], startWorker: Callable[[], Any], timer,
                 pollIntervalMs: int = 200) -> None:
        self.ui, self.resultNodes, self.startWorker = ui, resultNodes, startWorker
        self.correction: LesionCorrection | None = None
        self._cancelEnabled = False
        self.timer = timer
        self.timer.setInterval(pollIntervalMs)
        self.timer.timeout.connect(self.poll)
        ui.correctLesionsCollapsibleButton.connect("contentsCollapsed(bool)", self.onCollapsed)
        ui.undoCorrectionButton.connect("clicked(bool)", self.onUndo)
        ui.cancelButton.connect("clicked(bool)", self.cancel)

    @classmethod
    def forModule(cls, ui, parameterNode: Callable[[], Any], pythonExecutable: Callable[[], str],
                  moduleDir: str | Path, timer) -> CorrectionSection:
        """The section of the module panel: the result and the models folder/device from the parameter node."""

        def resultNodes():
            node = parameterNode()
            return node.inputVolume, node.outputSegmentation, node.outputTable

        def startWorker():
            node = parameterNode()
            return CorrectionWorker.start(pythonExecutable(), moduleDir, modelsDir=node.modelsDir,
                                          device=DEVICE_CHOICES[node.device],
                                          environment=slicer.util.startupEnvironment())

        return cls(ui, resultNodes, startWorker, timer)

    def onCollapsed(self, collapsed: bool) -> None:
        if collapsed:
            return
        volumeNode, segmentationNode, tableNode = self.resultNodes()
        if segmentationNode is None:
            self.ui.correctionStatusLabel.text = "Run Analyze with segmentation first."
            return
        if self.correction is not None and self.correction.segmentationNode is segmentationNode:
            return
        self.close()
        scene = segmentationNode.GetScene()
        nodes = []
        for name, widget in ((ADD_LIST_NAME, self.ui.addLesionPlaceWidget),
                             (REMOVE_LIST_NAME, self.ui.removeLesionPlaceWidget)):
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} ({segmentationNode.GetName()})")
            widget.setMRMLScene(scene)
            widget.setCurrentNode(node)
            nodes.append(node)
        self.correction = LesionCorrection(volumeNode, segmentationNode, tableNode, *nodes, self.startWorker,
                                           onStatus=self.onStatus)
        self.timer.start()

    def onStatus(self, text: str) -> None:
        self.ui.correctionStatusLabel.text = text

    def poll(self) -> None:
        if self.correction is None:
            return
        if self.resultNodes()[1] is not self.correction.segmentationNode:  # a new analysis, or the scene closed
            self.close()
            self.onCollapsed(self.ui.correctLesionsCollapsibleButton.collapsed)
            return
        self.correction.poll()
        # Cancel is otherwise enabled only while an analysis runs; it also stops a busy worker.
        worker = self.correction.worker
        busy = bool(self.correction.pending) or (worker is not None and worker.state == "starting")
        if busy != self._cancelEnabled:
            self._cancelEnabled = busy
            self.ui.cancelButton.enabled = busy

    def onUndo(self) -> None:
        if self.correction is not None:
            self.correction.undo()

    def cancel(self) -> None:
        if self.correction is not None:
            self.correction.cancel()

    def close(self) -> None:
        """Shut the worker down and forget the result (module cleanup; a new result)."""
        self.timer.stop()
        if self.correction is not None:
            self.correction.shutdown()
            self.correction.removeObservers()
            self.correction = None
