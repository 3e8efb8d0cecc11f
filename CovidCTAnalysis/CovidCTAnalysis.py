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
from CovidCTAnalysisSlicer import dicom_export, installing, model_install, requirements, slicer_versions
from CovidCTAnalysisSlicer.correction_panel import CorrectionSection
from CovidCTAnalysisSlicer.models import (
    DEVICE_CHOICES,
    METHOD_CHOICES,
    SEGMENT_CHOICES,
    listModelChoices,
    methodWithoutModels,
    panelModelMessage,
)
from CovidCTAnalysisSlicer.process import AnalyzeOptions, findPythonSlicer
from CovidCTAnalysisSlicer.progress_events import formatLogLine
from CovidCTAnalysisSlicer.results import parameterValues
from CovidCTAnalysisSlicer.run import AnalysisRun
from CovidCTAnalysisSlicer.training_run import TrainingRun, trainingEstimate
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
        # Checked when the module loads; the panel shows the message instead of the inputs (Widget.setup).
        if slicer_versions.runningSlicerProblem(slicer.app):
            logging.error(slicer_versions.runningSlicerProblem(slicer.app))


@parameterNodeWrapper
class CovidCTAnalysisParameterNode:
    """Inputs bound to the panel through SlicerParameterName, and the last result."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceSegmentation: vtkMRMLSegmentationNode
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = "trained models"
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
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(POLL_INTERVAL_MS)
        self.trainingTimer.timeout.connect(self.onTrainingTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicer_versions.runningSlicerProblem(slicer.app)
        if problem:  # refuse politely: say why and what to install, load nothing else
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            self.logic = None
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CovidCTAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        for label in (self.ui.statusLabel, self.ui.classLabel, self.ui.probabilitiesLabel, self.ui.provenanceLabel,
                      self.ui.researchNoteLabel):
            label.textFormat = qt.Qt.PlainText  # scan and model text (descriptions, ids) is shown as written, never as markup
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CovidCTAnalysisLogic()
        self.corrections = CorrectionSection.forModule(self.ui, self.logic.getParameterNode,
                                                       self.logic.pythonSlicerExecutable, MODULE_DIR, qt.QTimer())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModelLists)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3DButton)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSegButton)
        self.ui.classifierComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.installModelFolderButton.connect("clicked(bool)", lambda: self.onInstallModels(folder=True))
        self.ui.installModelZipButton.connect("clicked(bool)", lambda: self.onInstallModels(folder=False))
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.trainDemoButton.connect("clicked(bool)", self.onTrainDemoButton)
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancelTrainingButton)
        self.ui.segmenterComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.initializeParameterNode()
        self.refreshModelLists()

    def cleanup(self) -> None:
        self.pollTimer.stop()
        self.trainingTimer.stop()
        if self.logic:
            self.corrections.close()  # the correction worker exits with the module
            self.logic.cancelAnalysis()
            self.logic.cancelTraining()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic:
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
        method, why = methodWithoutModels(messages)
        if method and self._parameterNode:
            self._parameterNode.method = method  # no model: the threshold path is the one that can run
        self.ui.modelsInfoLabel.text = why
        self.ui.modelsLocationLabel.text = str(model_install.modelsFolder(modelsDir))
        self.onModelChosen()

    def onInstallModels(self, folder: bool) -> None:
        window = slicer.util.mainWindow()
        path = (qt.QFileDialog.getExistingDirectory(window, _("Model folder to install")) if folder else
                qt.QFileDialog.getOpenFileName(window, _("Model zip to install"), "", "Zip (*.zip)"))
        installed = path and showErrors(_("The model was not installed."), self.logic.installModels, path,
                                        self._parameterNode.modelsDir)
        if installed:
            self.refreshModelLists()
            slicer.util.infoDisplay(_("Installed:\n{models}").format(models="\n".join(m.label_line() for m in installed)))

    def onTrainDemoButton(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(trainingEstimate()) or not self.ensureRequirements(training=True):
            return
        if showErrors(_("The training could not start."), self.logic.startTraining, self._parameterNode.modelsDir):
            self.ui.logTextEdit.clear()
            self.appendLog(" ".join(self.logic.training.command))
            self.trainingTimer.start()
        self.onTrainingTimer()

    def onTrainingTimer(self) -> None:
        training = self.logic.training
        for event in training.poll() if training else []:
            self.appendLog(formatLogLine(event))
        self.ui.trainingProgressBar.value = int(round(100 * training.fraction)) if training else 0
        self.ui.trainDemoButton.enabled = training is None
        self.ui.cancelTrainingButton.enabled = training is not None
        if training is None or not training.finished:
            return
        self.trainingTimer.stop()
        self.logic.training = None
        self.onTrainingTimer()
        self.refreshModelLists()
        self.ui.trainingStatusLabel.text = {"succeeded": _("Demo models trained and installed."),
                                            "cancelled": _("Training cancelled.")}.get(training.state, _("Failed."))
        if training.state == "failed":
            slicer.util.errorDisplay(_("The training failed:\n\n{message}").format(message=training.process.errorMessage))

    def onCancelTrainingButton(self) -> None:
        if self.logic.training is not None:
            self.logic.training.cancel()  # the timer's next tick reports it and re-enables the button

    def onOpenModelsFolder(self) -> None:
        folder = model_install.modelsFolder(self._parameterNode.modelsDir, create=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

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

    def ensureRequirements(self, training: bool = False) -> bool:
        """On the first Analyze (or training): ask, then install the missing packages (never at import or open)."""
        if not showErrors(_("PyTorch is not ready."), self.logic.installTorch):
            return False
        missing = self.logic.missingRequirements(training)
        if missing and self.logic.slicerInstaller() is not None:
            # Slicer 5.12 asks, shows progress, reports its own errors and offers the restart: no second dialog.
            try:
                self.logic.installRequirements(missing)
            except Exception:  # noqa: BLE001 - declined or failed; Slicer has already told the user
                logging.exception("CovidCTAnalysis: packages not installed")
                return False
        elif missing:
            question = _("CovidCTAnalysis needs these Python packages, which are not installed:\n\n{packages}\n\n"
                         "Install them now with pip? This downloads them from PyPI.").format(packages="\n".join(missing))
            if not slicer.util.confirmOkCancelDisplay(question) or not showErrors(
                    _("Installing the packages failed."), self.logic.installRequirements, missing):
                return False
            stale = installing.alreadyImported(requirements.requirementNames(missing))
            if stale and slicer.util.confirmYesNoDisplay(_(
                    "Slicer had already loaded an older {packages}. Restart Slicer now so that it uses the new version? "
                    "(The analysis runs in its own process and works without a restart.)").format(packages=", ".join(stale))):
                slicer.util.restart()
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
            message = panelModelMessage(run.process.errorMessage)
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
        self.training = None

    def getParameterNode(self):
        return CovidCTAnalysisParameterNode(super().getParameterNode())

    @staticmethod
    def missingRequirements(training: bool = False) -> list:
        """requirements.txt lines not installed (and requirements-train.txt's for the demo training)."""
        names = ["requirements.txt"] + (["requirements-train.txt"] if training else [])
        return [line for name in names
                for line in requirements.missingRequirements(os.path.join(MODULE_DIR, "Resources", name))]

    @staticmethod
    def slicerInstaller():
        return installing.findPipEnsure(slicer)

    @staticmethod
    def installRequirements(missing: list) -> bool:
        """pip with the Slicer-provided packages pinned (constraints), so that torch is never replaced."""
        constraints = os.path.join(slicer.app.temporaryPath, "CovidCTAnalysis-constraints.txt")
        return installing.installPackages(missing, slicer, constraints)

    @staticmethod
    def installTorch() -> bool:
        """torch and torchvision from the PyTorch extension, in the tested range; a wrong installed one is refused."""
        try:
            from PyTorchUtils import PyTorchUtilsLogic
        except ImportError:
            PyTorchUtilsLogic = None
        installing.ensureTorch(PyTorchUtilsLogic)
        return True

    def installModels(self, path: str, modelsDir: str = ""):
        """Install a model folder or zip into the models folder (sha256 checked, as `covidct models install`)."""
        return model_install.installModels(path, modelsDir or None)

    isTorchAvailable = staticmethod(requirements.isTorchAvailable)
    pythonSlicerExecutable = staticmethod(findPythonSlicer)

    def startAnalysis(self, parameterNode) -> AnalysisRun:
        """Write the inputs to a temp folder and start ``covidct analyze --progress json`` in the background."""
        self.cancelAnalysis()
        options = AnalyzeOptions(method=METHOD_CHOICES[parameterNode.method],
                                 segment=SEGMENT_CHOICES[parameterNode.segmentPolicy],
                                 device=DEVICE_CHOICES[parameterNode.device],
                                 classifier=parameterNode.classifierModel, segmenter=parameterNode.segmenterModel,
                                 modelsDir=parameterNode.modelsDir)
        self.run = AnalysisRun.start(parameterNode.inputVolume, options, self.pythonSlicerExecutable(), MODULE_DIR,
                                     referenceSegmentationNode=parameterNode.referenceSegmentation,
                                     environment=slicer.util.startupEnvironment(),
                                     tempRoot=slicer.app.temporaryPath)
        logging.info("CovidCTAnalysis started: %s", " ".join(self.run.process.command))
        return self.run

    def startTraining(self, modelsDir: str = "", quick: bool = False) -> TrainingRun:
        """Train, evaluate and install the DEMO models in a background PythonSlicer (training_run)."""
        self.cancelTraining()
        self.training = TrainingRun(self.pythonSlicerExecutable(), MODULE_DIR, model_install.modelsFolder(modelsDir),
                                    os.path.join(slicer.app.temporaryPath, "CovidCTAnalysis-demo"),
                                    environment=slicer.util.startupEnvironment(), quick=quick)
        return self.training

    def cancelTraining(self) -> None:
        if self.training is not None:
            self.training.cancel()
            self.training = None

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
        try:
            events = run.wait(timeout)
        except BaseException:  # TimeoutExpired or an interrupt: end the process, remove its temp folder
            self.cancelAnalysis()
            raise
        for event in events:
            logging.info(formatLogLine(event))
        if run.state != "succeeded":
            message = panelModelMessage(run.process.errorMessage)
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
        """In a background PythonSlicer (dicom_export.exportDicomSeg): Slicer's own pydicom stays as it is."""
        return dicom_export.exportDicomSeg(segmentationNode, volumeNode, instanceFiles, outputPath,
                                           pythonExecutable=self.pythonSlicerExecutable(), moduleDir=MODULE_DIR,
                                           environment=slicer.util.startupEnvironment())


class CovidCTAnalysisTest(ScriptedLoadableModuleTest):
    """On a synthetic phantom: the threshold path end to end, the model path when models are installed.

    On a fresh install (no packages installed by the first Analyze yet, no models) only the scene round trip runs
    and the log says what was skipped, so the test passes on the extension build machines.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CovidCTAnalysisPhantom()

    def test_CovidCTAnalysisPhantom(self):
        from CovidCTAnalysisSlicer.selftest import runSelfTest

        for step in runSelfTest(self, CovidCTAnalysisLogic(), slicer.mrmlScene):
            self.delayDisplay(step)
        self.delayDisplay(_("Test passed"))
