"""CovidCTAnalysis: COVID-19 chest CT classification, lung and lesion segmentation, statistics.

A thin Slicer adapter. The computing happens in the Slicer-free core
(``CovidCTAnalysisLib``), run by ``PythonSlicer`` in a background process; the
MRML conversions live in ``CovidCTAnalysisSlicer`` (tested outside Slicer).
Research use, not for diagnosis.
"""

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from CovidCTAnalysisSlicer import dicom_export, requirements
from CovidCTAnalysisSlicer.models import DEVICE_CHOICES, SEGMENT_CHOICES, listModelChoices
from CovidCTAnalysisSlicer.process import AnalyzeOptions, findPythonSlicer
from CovidCTAnalysisSlicer.progress_events import formatLogLine
from CovidCTAnalysisSlicer.results import parameterValues
from CovidCTAnalysisSlicer.run import AnalysisRun
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
POLL_INTERVAL_MS = 200


class CovidCTAnalysis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("COVID CT Analysis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CovidCTAnalysis contributors"]
        self.parent.helpText = _(
            "Classifies a chest CT as Normal, Pneumonia or COVID-19 (ResNet-50) and segments the left lung, "
            "right lung and lesions (MONAI 3D U-Net), with volumes, HU statistics and lesion percent per lung. "
            "Research use, not for diagnosis. Demo models are trained on synthetic phantoms and labelled so."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI, PyTorch/torchvision, SimpleITK, highdicom and slicerio."
        )


@parameterNodeWrapper
class CovidCTAnalysisParameterNode:
    """Inputs bound to the panel through SlicerParameterName, and the last result."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    segmentPolicy: Annotated[str, Choice(list(SEGMENT_CHOICES))] = "if COVID-19"
    modelsDir: str = ""
    classifierModel: str = ""  # ID@VERSION; "" lets the core pick (and report) its default
    segmenterModel: str = ""
    resultClass: str = ""
    probabilityNormal: float = 0.0
    probabilityPneumonia: float = 0.0
    probabilityCovid: float = 0.0
    resultSummary: str = ""
    resultProvenance: str = ""
    resultNote: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode


def showErrors(message: str, function, *args):
    """Call ``function``; on an exception show ``message`` with the error's own text and return None."""
    try:
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
            return function(*args) or True
    except Exception:  # noqa: BLE001 - already shown to the user and logged by tryWithErrorDisplay
        logging.exception(message)
        return None


class CovidCTAnalysisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPollTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CovidCTAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CovidCTAnalysisLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModelLists)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3DButton)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSegButton)
        self.ui.classifierComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.segmenterComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.initializeParameterNode()
        self.refreshModelLists()

    def cleanup(self) -> None:
        self.pollTimer.stop()
        if self.logic:
            self.logic.cancelAnalysis()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromResults)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromResults)
            self.updateGuiFromResults()

    def refreshModelLists(self) -> None:
        """Fill the classifier and segmenter lists from the models folder (demo models are labelled DEMO)."""
        modelsDir = self._parameterNode.modelsDir if self._parameterNode else ""
        messages = []
        for comboBox, task, field in ((self.ui.classifierComboBox, "classification", "classifierModel"),
                                      (self.ui.segmenterComboBox, "segmentation", "segmenterModel")):
            choices, message = listModelChoices(task, modelsDir)
            wasBlocked = comboBox.blockSignals(True)
            comboBox.clear()
            for choice in choices:
                comboBox.addItem(choice.label, choice.spec)
            wanted = getattr(self._parameterNode, field, "") if self._parameterNode else ""
            index = comboBox.findData(wanted) if wanted else 0
            comboBox.setCurrentIndex(max(index, 0))
            comboBox.blockSignals(wasBlocked)
            if message:
                messages.append(message)
        self.ui.modelsInfoLabel.text = "\n".join(messages)
        self.onModelChosen()

    def onModelChosen(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.classifierModel = self.ui.classifierComboBox.currentData or ""
            self._parameterNode.segmenterModel = self.ui.segmenterComboBox.currentData or ""

    def updateGuiFromResults(self, caller=None, event=None) -> None:
        node = self._parameterNode
        running = self.logic.run is not None and not self.logic.run.finished
        self.ui.analyzeButton.enabled = bool(node and node.inputVolume) and not running
        self.ui.cancelButton.enabled = running
        if not node:
            return
        self.ui.classLabel.text = node.resultClass or "-"
        self.ui.probabilitiesLabel.text = node.resultSummary or "-"
        self.ui.provenanceLabel.text = node.resultProvenance or "-"
        self.ui.researchNoteLabel.text = node.resultNote or _("Research use, not for diagnosis.")
        self.ui.statisticsTableView.setMRMLTableNode(node.outputTable)
        self.ui.show3DButton.enabled = node.outputSegmentation is not None
        self.ui.exportDicomSegButton.enabled = node.outputSegmentation is not None

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onAnalyzeButton(self) -> None:
        if not self.ensureRequirements():
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting the analysis...")
        if showErrors(_("The analysis could not start."), self.logic.startAnalysis, self._parameterNode):
            self.appendLog(" ".join(self.logic.run.process.command))
            self.pollTimer.start()
        else:
            self.ui.statusLabel.text = ""
        self.updateGuiFromResults()

    def ensureRequirements(self) -> bool:
        """On the first Analyze: ask, then install the missing packages (never at import or module open)."""
        if not self.logic.isTorchAvailable() and not showErrors(_("Installing PyTorch failed."),
                                                                self.logic.installTorch):
            return False
        missing = self.logic.missingRequirements()
        if not missing:
            return True
        question = _("CovidCTAnalysis needs these Python packages, which are not installed:\n\n{packages}\n\n"
                     "Install them now with pip? This downloads them from PyPI.").format(packages="\n".join(missing))
        if not slicer.util.confirmOkCancelDisplay(question):
            return False
        if not showErrors(_("Installing the packages failed."), self.logic.installRequirements, missing):
            return False
        self.refreshModelLists()
        return True

    def onPollTimer(self) -> None:
        run = self.logic.run
        if run is None:
            self.pollTimer.stop()
            return
        for event in self.logic.pollAnalysis():
            self.appendLog(formatLogLine(event))
            if event.kind == "step" and event.message:
                self.ui.statusLabel.text = event.message
        self.ui.progressBar.value = int(round(100 * run.process.fraction))
        if not run.finished:
            return
        self.pollTimer.stop()
        if run.state == "succeeded":
            # The logic's parameter node, not self._parameterNode: the user may have left the module meanwhile.
            loaded = showErrors(_("The results could not be loaded."), self.logic.finishAnalysis,
                                self.logic.getParameterNode())
            self.ui.statusLabel.text = _("Done.") if loaded else _("The results could not be loaded.")
        elif run.state == "failed":
            message = run.process.errorMessage
            self.logic.cancelAnalysis()
            self.ui.statusLabel.text = _("Failed: {message}").format(message=message)
            slicer.util.errorDisplay(_("The analysis failed:\n\n{message}").format(message=message))
        self.updateGuiFromResults()

    def onCancelButton(self) -> None:
        if self.logic and self.logic.run is not None and not self.logic.run.finished:
            self.pollTimer.stop()
            self.logic.cancelAnalysis()
            self.appendLog(_("Cancelled; nothing was added to the scene."))
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.value = 0
            self.updateGuiFromResults()

    def onShow3DButton(self) -> None:
        showErrors(_("Showing the segments in 3D failed."), self.logic.show3D, self._parameterNode.outputSegmentation)

    def onExportDicomSegButton(self) -> None:
        node = self._parameterNode
        try:
            files = dicom_export.dicomInstanceFilesForVolume(node.inputVolume, getattr(slicer, "dicomDatabase", None))
        except dicom_export.DicomSourceMissing as e:
            slicer.util.warningDisplay(str(e), windowTitle=_("DICOM SEG needs a DICOM source"))
            return
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save DICOM SEG"),
                                              f"{node.inputVolume.GetName()}_seg.dcm", "DICOM (*.dcm)")
        if not path:
            return
        result = showErrors(_("DICOM SEG export failed."), self.logic.exportDicomSeg,
                            node.outputSegmentation, node.inputVolume, files, path)
        if result and result.written:
            slicer.util.infoDisplay(_("DICOM SEG written to {path}").format(path=path))
        elif result:
            slicer.util.warningDisplay(_("DICOM SEG not written: {reason}").format(reason=result.reason))


class CovidCTAnalysisLogic(ScriptedLoadableModuleLogic):
    """Starts the core CLI in PythonSlicer, polls it, and puts its outputs into the scene (no GUI needed)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.run = None

    def getParameterNode(self):
        return CovidCTAnalysisParameterNode(super().getParameterNode())

    @staticmethod
    def requirementsPath() -> str:
        return os.path.join(MODULE_DIR, "Resources", "requirements.txt")

    def missingRequirements(self) -> list:
        return requirements.missingRequirements(self.requirementsPath())

    def installRequirements(self, missing: list) -> None:
        slicer.util.pip_install(missing)

    @staticmethod
    def installTorch() -> bool:
        """torch and torchvision come from the PyTorch extension (it asks the user before installing)."""
        try:
            import PyTorchUtils
        except ImportError as e:
            raise RuntimeError(_("PyTorch is not installed. Install the PyTorch extension in the Extensions "
                                 "Manager, restart Slicer and press Analyze again.")) from e
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
            raise RuntimeError(_("PyTorch was not installed; the analysis needs it."))
        return True

    isTorchAvailable = staticmethod(requirements.isTorchAvailable)
    pythonSlicerExecutable = staticmethod(findPythonSlicer)

    def startAnalysis(self, parameterNode) -> AnalysisRun:
        """Write the inputs to a temp folder and start ``covidct analyze --progress json`` in the background."""
        self.cancelAnalysis()
        options = AnalyzeOptions(segment=SEGMENT_CHOICES[parameterNode.segmentPolicy],
                                 device=DEVICE_CHOICES[parameterNode.device],
                                 classifier=parameterNode.classifierModel, segmenter=parameterNode.segmenterModel,
                                 modelsDir=parameterNode.modelsDir)
        self.run = AnalysisRun.start(parameterNode.inputVolume, options, self.pythonSlicerExecutable(), MODULE_DIR,
                                     referenceSegmentationNode=parameterNode.referenceSegmentation,
                                     environment=slicer.util.startupEnvironment(),
                                     tempRoot=slicer.app.temporaryPath)
        logging.info("CovidCTAnalysis started: %s", " ".join(self.run.process.command))
        return self.run

    def pollAnalysis(self) -> list:
        return self.run.poll() if self.run is not None else []

    def cancelAnalysis(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.run = None

    def finishAnalysis(self, parameterNode):
        """Load the outputs into the scene (replacing earlier results) and store the class on the parameter node."""
        run, self.run = self.run, None
        results = run.finish(slicer.mrmlScene)
        with slicer.util.NodeModify(parameterNode):
            for name, value in parameterValues(results).items():
                setattr(parameterNode, name, value)
        if results.segmentationNode is not None:
            slicer.util.setSliceViewerLayers(background=run.volumeNode, fit=True)
        return results

    def process(self, parameterNode, timeout: float = 3600.0):
        """Run an analysis to the end without a GUI (scripts, the self-test); returns AnalysisResults."""
        run = self.startAnalysis(parameterNode)
        for event in run.wait(timeout):
            logging.info(formatLogLine(event))
        if run.state != "succeeded":
            message = run.process.errorMessage
            self.cancelAnalysis()
            raise RuntimeError(message)
        return self.finishAnalysis(parameterNode)

    def show3D(self, segmentationNode) -> None:
        segmentationNode.CreateClosedSurfaceRepresentation()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def exportDicomSeg(self, segmentationNode, volumeNode, instanceFiles: list, outputPath: str):
        return dicom_export.exportDicomSeg(segmentationNode, volumeNode, instanceFiles, outputPath)


class CovidCTAnalysisTest(ScriptedLoadableModuleTest):
    """End-to-end on a synthetic phantom with the installed (or demo) models."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CovidCTAnalysisPhantom()

    def test_CovidCTAnalysisPhantom(self):
        from CovidCTAnalysisSlicer.segmentations import segmentNames
        from CovidCTAnalysisSlicer.selftest import addPhantomToScene, tableMismatches, tableValue

        self.delayDisplay(_("Making a synthetic COVID-19 phantom"))
        phantom, volumeNode, truthNode = addPhantomToScene(slicer.mrmlScene, "covid", 7)
        logic = CovidCTAnalysisLogic()
        self.assertEqual(logic.missingRequirements(), [], "press Analyze once to install the requirements")
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volumeNode
        parameterNode.referenceSegmentation = truthNode
        parameterNode.segmentPolicy = "always"
        self.delayDisplay(_("Running the analysis (background process)"))
        results = logic.process(parameterNode)

        self.assertEqual(segmentNames(parameterNode.outputSegmentation), ["Left lung", "Right lung", "Lesion"])
        truthLesionMl = phantom.lesion_volume_ml()
        lesionMl = tableValue(parameterNode.outputTable, "Lesion", "Volume")
        self.assertAlmostEqual(lesionMl, truthLesionMl, delta=0.5 * truthLesionMl)
        self.assertEqual(tableMismatches(parameterNode.outputTable, results.report), [])
        self.assertGreater(tableValue(parameterNode.outputTable, "Left lung", "Dice"), 0.5)
        self.assertEqual(parameterNode.resultClass, "COVID-19")
        self.assertIn("not for diagnosis", parameterNode.resultNote.lower())

        # Re-running replaces the results instead of adding new nodes.
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        logic.process(parameterNode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before)
        self.delayDisplay(_("Test passed"))
