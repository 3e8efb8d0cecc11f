"""CovidCTAnalysis.py's Logic, run outside the Slicer application.

The MRML scene and nodes are the real ones from the slicer-core wheel. Only what needs the Qt
application is replaced by small stand-ins, listed in ``standIns``: ``qt``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` (a plain typed holder with the
class's defaults) and ``slicer.app``. The Logic's own code (startAnalysis, pollAnalysis, process,
finishAnalysis, cancelAnalysis) runs unchanged, with the real core CLI in a subprocess.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import typing
import unittest
from pathlib import Path

import pytest
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()  # skips locally, fails under CI=true

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
sys.path.insert(0, str(MODULE))


class _Signal:
    def connect(self, *args):
        pass


class _QTimer:
    def __init__(self):
        self.timeout = _Signal()

    def setInterval(self, ms):
        pass


class _Choice:
    def __init__(self, choices):
        self.choices = list(choices)


def _parameterNodeWrapper(cls):
    """Stand-in: typed attributes with the class defaults, Start/EndModify forwarded to the MRML node."""
    hints = typing.get_type_hints(cls, include_extras=True)

    class Wrapper:
        allParameters = hints

        def __init__(self, node):
            self.parameterNode = node
            for name, hint in hints.items():
                setattr(self, name, getattr(cls, name, None))
                for extra in getattr(hint, "__metadata__", ()):
                    if isinstance(extra, _Choice):
                        assert getattr(cls, name) in extra.choices, (name, extra.choices)

        def StartModify(self):
            return self.parameterNode.StartModify()

        def EndModify(self, wasModifying):
            self.parameterNode.EndModify(wasModifying)

    Wrapper.__name__ = cls.__name__
    return Wrapper


class _ScriptedLoadableModuleLogic:
    def __init__(self):
        pass

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode("CovidCTAnalysis", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag("CovidCTAnalysis")
            slicer.mrmlScene.AddNode(node)
        return node


class _StartupEnvironment:
    def keys(self):
        return list(os.environ)

    def value(self, key):
        return os.environ[key]


@pytest.fixture()
def moduleAndScene(monkeypatch, tmp_path):
    scene = slicer.vtkMRMLScene()
    segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentationsLogic.SetMRMLScene(scene)
    qt = types.ModuleType("qt")
    qt.QTimer = _QTimer
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice = _Choice
    pnw.parameterNodeWrapper = _parameterNodeWrapper
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {"__init__": lambda self, parent: None})
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,),
                                          {"delayDisplay": lambda self, message, msec=None: None})
    slm.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("slicer.parameterNodeWrapper", pnw),
                         ("slicer.ScriptedLoadableModule", slm)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path),
                                                            startupEnvironment=_StartupEnvironment), raising=False)
    shown = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw))
    monkeypatch.delitem(sys.modules, "CovidCTAnalysis", raising=False)
    module = importlib.import_module("CovidCTAnalysis")
    monkeypatch.setattr(module.CovidCTAnalysisLogic, "pythonSlicerExecutable", staticmethod(lambda: sys.executable))
    yield module, scene, tmp_path, shown
    sys.modules.pop("CovidCTAnalysis", None)  # it was built on stand-ins; nothing else may reuse it
    del segmentationsLogic


def test_parameter_node_defaults(moduleAndScene):
    module, scene, _tmp, _shown = moduleAndScene
    parameterNode = module.CovidCTAnalysisLogic().getParameterNode()
    assert (parameterNode.device, parameterNode.segmentPolicy, parameterNode.resultClass) == ("auto", "if COVID-19", "")
    assert parameterNode.inputVolume is None and parameterNode.outputSegmentation is None


def test_logic_reports_the_cli_error_and_adds_nothing(moduleAndScene, monkeypatch, tmp_path):
    """Without installed models the core refuses with its how-to-get-models message, which the Logic raises."""
    module, scene, tempRoot, _shown = moduleAndScene
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "no-models"))
    from CovidCTAnalysisSlicer.selftest import addPhantomToScene

    _phantom, volumeNode, _truth = addPhantomToScene(scene, "covid", 2, size=(80, 80, 30))
    logic = module.CovidCTAnalysisLogic()
    parameterNode = logic.getParameterNode()
    parameterNode.inputVolume = volumeNode
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="no classification model is installed"):
        logic.process(parameterNode, timeout=300)
    assert scene.GetNumberOfNodes() == before
    assert logic.run is None and parameterNode.outputSegmentation is None
    assert not [p for p in Path(tempRoot).iterdir() if p.name.startswith("CovidCTAnalysis-")]


@pytest.mark.slow
def test_logic_end_to_end_with_installed_models(moduleAndScene, tiny_models_dir):
    """The model method through the Logic, with the session's tiny demo models (conftest) installed."""
    from CovidCTAnalysisSlicer.models import listModelChoices

    assert listModelChoices("classification")[0] and listModelChoices("segmentation")[0]
    module, scene, _tmp, shown = moduleAndScene
    from CovidCTAnalysisSlicer.selftest import addPhantomToScene, tableMismatches

    phantom, volumeNode, truthNode = addPhantomToScene(scene, "covid", 7, size=(96, 96, 40))
    logic = module.CovidCTAnalysisLogic()
    parameterNode = logic.getParameterNode()
    parameterNode.inputVolume = volumeNode
    parameterNode.referenceSegmentation = truthNode
    parameterNode.segmentPolicy = "always"
    parameterNode.device = "CPU"
    results = logic.process(parameterNode, timeout=1200)
    assert parameterNode.resultClass in ("Normal", "Pneumonia", "COVID-19")
    total = parameterNode.probabilityNormal + parameterNode.probabilityPneumonia + parameterNode.probabilityCovid
    assert total == pytest.approx(1.0, abs=1e-3)
    assert "sha256" in parameterNode.resultProvenance and "not for diagnosis" in parameterNode.resultNote.lower()
    assert tableMismatches(parameterNode.outputTable, results.report) == []
    assert shown and shown[-1]["background"] is volumeNode
    nSegmentations = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    logic.process(parameterNode, timeout=1200)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nSegmentations


@pytest.mark.slow
def test_module_self_test_runs_when_models_are_installed(moduleAndScene, tiny_models_dir):
    """The Slicer self-test (CovidCTAnalysisTest) itself, on the real scene and the real core, with the
    session's tiny demo models (conftest) installed, so that its model steps run."""
    from CovidCTAnalysisSlicer.models import listModelChoices

    assert listModelChoices("classification")[0] and listModelChoices("segmentation")[0]
    module, _scene, _tmp, _shown = moduleAndScene
    selfTest = module.CovidCTAnalysisTest("test_CovidCTAnalysisPhantom")
    selfTest.runTest()
