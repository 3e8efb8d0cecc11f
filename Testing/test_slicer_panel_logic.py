"""The panel's new Logic paths (issue 15), with the stand-in harness of test_slicer_module_logic:
models installed from a folder or a zip (a tampered one refused), the Method reaching the background
process, Logic.process cleaning up after a timeout, and the self-test on an install without models."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
from slicer_required import requireSlicer

slicer = requireSlicer()

from test_model_registry import make_folder, tamper  # noqa: E402
from test_slicer_module_logic import moduleAndScene  # noqa: E402, F401 - the shared fixture

REPO = Path(__file__).resolve().parents[1]


def zipFolder(folder: Path, archive: Path, arcRoot: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, f"{arcRoot}/{path.relative_to(folder)}")
    return archive


def test_logic_installs_a_model_folder_and_a_zip(moduleAndScene, tmp_path):  # noqa: F811
    from CovidCTAnalysisSlicer.models import listModelChoices

    module, _scene, _tmp, _shown = moduleAndScene
    logic = module.CovidCTAnalysisLogic()
    modelsDir = tmp_path / "models"
    installed = logic.installModels(str(make_folder(tmp_path / "a", mid="seg-a")), str(modelsDir))
    assert [(m.id, m.version) for m in installed] == [("seg-a", "0.1.0")]
    archive = zipFolder(make_folder(tmp_path / "b", seed=1, mid="seg-b"), tmp_path / "b.zip", "seg-b-model")
    installed = logic.installModels(str(archive), str(modelsDir))
    assert [m.id for m in installed] == ["seg-b"]
    choices, message = listModelChoices("segmentation", str(modelsDir))
    assert sorted(c.spec for c in choices) == ["seg-a@0.1.0", "seg-b@0.1.0"] and message == ""
    assert not [p for p in Path(_tmp).iterdir() if p.name.startswith("CovidCTAnalysis-models-")]


def test_logic_refuses_tampered_models_and_unsafe_zips(moduleAndScene, tmp_path):  # noqa: F811
    from CovidCTAnalysisLib.errors import ModelError
    from CovidCTAnalysisSlicer.model_install import ModelArchiveError

    module, _scene, _tmp, _shown = moduleAndScene
    logic = module.CovidCTAnalysisLogic()
    modelsDir = tmp_path / "models"
    folder = make_folder(tmp_path / "t", mid="seg-t")
    tamper(folder / "model.safetensors")
    with pytest.raises(ModelError, match="sha256"):
        logic.installModels(str(folder), str(modelsDir))
    with pytest.raises(ModelError, match="sha256"):
        logic.installModels(str(zipFolder(folder, tmp_path / "t.zip", "t")), str(modelsDir))
    assert not (modelsDir / "seg-t").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside/metadata.json", "{}")
    with pytest.raises(ModelArchiveError, match="outside"):
        logic.installModels(str(evil), str(modelsDir))
    assert not (tmp_path / "outside").exists()
    (tmp_path / "not.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelArchiveError, match="not a readable zip"):
        logic.installModels(str(tmp_path / "not.zip"), str(modelsDir))


def test_method_choice_reaches_the_background_process(moduleAndScene, monkeypatch, tmp_path):  # noqa: F811
    from CovidCTAnalysisSlicer.models import METHOD_CHOICES
    from CovidCTAnalysisSlicer.selftest import addPhantomToScene

    module, scene, _tmp, _shown = moduleAndScene
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "no-models"))
    _phantom, volumeNode, _truth = addPhantomToScene(scene, "covid", 2, size=(64, 64, 24))
    logic = module.CovidCTAnalysisLogic()
    parameterNode = logic.getParameterNode()
    parameterNode.inputVolume = volumeNode
    assert METHOD_CHOICES[parameterNode.method] == "model"  # the default
    for label, value in METHOD_CHOICES.items():
        parameterNode.method = label
        run = logic.startAnalysis(parameterNode)
        command = run.process.command
        logic.cancelAnalysis()
        if value == "model":
            assert "--method" not in command  # the CLI's default
        else:
            assert command[command.index("--method") + 1] == value


def test_process_timeout_cancels_and_removes_the_temp_folder(moduleAndScene, monkeypatch, tmp_path):  # noqa: F811
    from CovidCTAnalysisSlicer.selftest import addPhantomToScene

    module, scene, tempRoot, _shown = moduleAndScene
    _phantom, volumeNode, _truth = addPhantomToScene(scene, "covid", 2, size=(64, 64, 24))
    logic = module.CovidCTAnalysisLogic()
    parameterNode = logic.getParameterNode()
    parameterNode.inputVolume = volumeNode
    started = []
    original = logic.startAnalysis
    monkeypatch.setattr(logic, "startAnalysis", lambda node: started.append(original(node)) or started[-1])
    with pytest.raises(subprocess.TimeoutExpired):
        logic.process(parameterNode, timeout=0.2)  # the CLI needs seconds just to import
    run = started[0]
    assert logic.run is None and run.state == "cancelled"
    assert run.process._process.poll() is not None  # the subprocess is gone
    assert not run.workDir.exists()
    assert not [p for p in Path(tempRoot).iterdir() if p.name.startswith("CovidCTAnalysis-")]


def test_self_test_without_the_first_analyze_packages_passes(moduleAndScene, monkeypatch, tmp_path):  # noqa: F811
    """A fresh install (extension build machines): only the scene round trip runs, and it says what it skipped."""
    from CovidCTAnalysisSlicer import selftest

    module, _scene, _tmp, _shown = moduleAndScene
    logic = module.CovidCTAnalysisLogic()
    monkeypatch.setattr(logic, "missingRequirements", lambda: ["monai>=1.4,<1.7"])
    monkeypatch.setattr(logic, "process", lambda *a, **k: pytest.fail("no analysis may run without the packages"))
    steps = list(selftest.runSelfTest(module.CovidCTAnalysisTest("test_CovidCTAnalysisPhantom"), logic,
                                      slicer.mrmlScene, modelsDir=str(tmp_path / "no-models")))
    assert len(steps) == 2 and "monai" in steps[1] and steps[1].startswith("Skipped")


@pytest.mark.slow
def test_module_self_test_without_models_runs_the_threshold_path(moduleAndScene, monkeypatch, tmp_path):  # noqa: F811
    module, scene, _tmp, _shown = moduleAndScene
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "no-models"))
    shown = []
    selfTest = module.CovidCTAnalysisTest("test_CovidCTAnalysisPhantom")
    monkeypatch.setattr(selfTest, "delayDisplay", lambda message, msec=None: shown.append(message), raising=False)
    selfTest.runTest()
    assert any(line.startswith("Threshold method end to end") for line in shown), shown
    assert any("no trained models" in line for line in shown), shown
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") >= 2  # truth + the threshold result


def test_logic_starts_and_cancels_the_demo_training(moduleAndScene, tmp_path):  # noqa: F811
    module, _scene, tempRoot, _shown = moduleAndScene
    logic = module.CovidCTAnalysisLogic()
    training = logic.startTraining(str(tmp_path / "models"), quick=True)
    command = training.command
    assert command[1:3] == ["-m", "training.demo"]
    assert command[command.index("--models-dir") + 1] == str(tmp_path / "models")
    assert Path(command[command.index("--work-dir") + 1]).parent == Path(tempRoot)
    logic.cancelTraining()
    assert logic.training is None and training.state == "cancelled"
    assert training.process._process.poll() is not None
