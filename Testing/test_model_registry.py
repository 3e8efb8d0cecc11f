"""Model folders and the registry: install/list/verify/resolve/load, sha256 refusals, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from CovidCTAnalysisLib.cli import models as cli_models
from CovidCTAnalysisLib.errors import InputError, ModelError, OutputError
from CovidCTAnalysisLib.models.device import select_device
from CovidCTAnalysisLib.models.folder import load_model_folder, loads_so_far
from CovidCTAnalysisLib.models.metadata import METADATA_FILE, WEIGHTS_FILE
from CovidCTAnalysisLib.models.networks import build_segmenter, sha256_file
from CovidCTAnalysisLib.models.registry import ModelRegistry, default_models_dir, save_model_folder, version_key

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def seg_metadata(mid: str = "seg-test", version: str = "0.1.0", demo: bool = True, **extra) -> dict:
    meta = {
        "id": mid, "version": version, "task": "segmentation",
        "architecture": {"name": "monai.UNet", "kwargs": {"n_labels": 4, **TINY}},
        "trained_on": "nothing: untrained test network", "intended_use": "Research use, not for diagnosis.",
        "preprocessing": {"spacing_mm": [4.0, 4.0, 4.0], "roi_size": [16, 16, 16]},
        "labels": {"0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"},
        "eval_metrics": {"dice_lesion": 0.5}, "demo": demo,
    }
    meta.update(extra)
    return meta


def tiny_segmenter(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_segmenter(4, channels=(4, 8), strides=(2,), num_res_units=0)


def make_folder(path: Path, seed: int = 0, **meta) -> Path:
    save_model_folder(tiny_segmenter(seed), seg_metadata(**meta), path)
    return path


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last tensor byte: still valid safetensors, other weights
    path.write_bytes(bytes(data))


def test_save_model_folder_records_sha256_and_refuses_overwrite(tmp_path):
    folder = tmp_path / "m"
    meta = save_model_folder(tiny_segmenter(), seg_metadata(), folder)
    assert meta.sha256 == sha256_file(folder / WEIGHTS_FILE)
    on_disk = json.loads((folder / METADATA_FILE).read_text())
    assert on_disk["sha256"] == meta.sha256 and on_disk["pytorch_version"] == torch.__version__
    with pytest.raises(OutputError, match="exists"):
        save_model_folder(tiny_segmenter(1), seg_metadata(), folder)
    meta2 = save_model_folder(tiny_segmenter(1), seg_metadata(), folder, force=True)
    assert meta2.sha256 != meta.sha256 == meta.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_save_model_folder_refuses_weights_that_do_not_fit(tmp_path):
    other = build_segmenter(4, channels=(8, 16), strides=(2,), num_res_units=0)
    with pytest.raises(ModelError, match="do not fit"):
        save_model_folder(other, seg_metadata(), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_model_folder_refuses_incomplete_metadata(tmp_path):
    meta = seg_metadata()
    del meta["trained_on"]
    with pytest.raises(ModelError, match="trained_on"):
        save_model_folder(tiny_segmenter(), meta, tmp_path / "a")
    with pytest.raises(ModelError, match="spacing_mm"):
        save_model_folder(tiny_segmenter(), seg_metadata(preprocessing={"roi_size": [16, 16, 16]}), tmp_path / "b")
    with pytest.raises(ModelError, match="not for diagnosis"):
        save_model_folder(tiny_segmenter(), seg_metadata(intended_use="clinical use"), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_install_list_verify_resolve_load(tmp_path):
    src = make_folder(tmp_path / "src")
    reg = ModelRegistry(tmp_path / "reg")
    meta = reg.install(src)
    assert (tmp_path / "reg" / "seg-test" / "0.1.0" / WEIGHTS_FILE).is_file()
    assert [m.id for m in reg.list()] == ["seg-test"]
    assert [(m.id, ok) for m, ok, _ in reg.verify()] == [("seg-test", True)]
    assert reg.resolve("segmentation").sha256 == meta.sha256
    assert reg.resolve("segmentation", "seg-test").version == "0.1.0"
    assert reg.resolve("segmentation", "seg-test@0.1.0").version == "0.1.0"
    with pytest.raises(ModelError, match="installed versions: 0.1.0"):
        reg.resolve("segmentation", "seg-test@9.9.9")
    with pytest.raises(ModelError, match="is a segmentation model"):
        reg.resolve("classification", "seg-test")
    before = loads_so_far()
    loaded = reg.load(None, task="segmentation")
    assert loads_so_far() == before + 1  # what the interactive worker reports as model_loads
    assert not loaded.module.training
    ref = tiny_segmenter().state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.module.state_dict().items())
    assert reg.install(src).sha256 == meta.sha256  # the same model again is a no-op


def test_missing_models_say_how_to_get_them(tmp_path):
    reg = ModelRegistry(tmp_path / "empty")
    for call in (lambda: reg.resolve("classification"), lambda: reg.load(None, task="segmentation"),
                 lambda: reg.resolve("segmentation", "nope@1.0")):
        with pytest.raises(ModelError) as err:
            call()
        assert "make demo" in str(err.value) and "covidct models install" in str(err.value)
        assert str(tmp_path / "empty") in str(err.value)


def test_resolve_prefers_highest_non_demo_then_demo(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.install(make_folder(tmp_path / "d", mid="seg-demo", version="3.0.0", demo=True))
    assert reg.resolve("segmentation").id == "seg-demo"
    reg.install(make_folder(tmp_path / "a", seed=1, mid="seg-real", version="0.9.0", demo=False))
    reg.install(make_folder(tmp_path / "b", seed=2, mid="seg-real", version="0.10.0", demo=False))
    chosen = reg.resolve("segmentation")
    assert (chosen.id, chosen.version) == ("seg-real", "0.10.0")  # 0.10 > 0.9, and demo is never preferred
    assert reg.resolve("segmentation", "seg-real").version == "0.10.0"
    assert version_key("1.10.0") > version_key("1.9.2") > version_key("1.9.2-rc1")


def test_install_refuses_tampered_source(tmp_path):
    src = make_folder(tmp_path / "src")
    tamper(src / WEIGHTS_FILE)
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(ModelError, match="sha256"):
        reg.install(src)
    assert reg.list() == []


def test_load_refuses_weights_tampered_after_install(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    meta = reg.install(make_folder(tmp_path / "src"))
    tamper(reg.folder(meta) / WEIGHTS_FILE)
    with pytest.raises(ModelError, match="sha256"):
        reg.load(meta)
    with pytest.raises(ModelError, match="sha256"):
        load_model_folder(reg.folder(meta))
    [(_, ok, message)] = reg.verify()
    assert not ok and "sha256" in message


def test_install_refuses_other_weights_under_same_version_unless_forced(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    first = reg.install(make_folder(tmp_path / "a", seed=0))
    second_src = make_folder(tmp_path / "b", seed=1)
    with pytest.raises(ModelError, match="already installed"):
        reg.install(second_src)
    assert reg.resolve("segmentation").sha256 == first.sha256
    second = reg.install(second_src, force=True)
    assert reg.resolve("segmentation").sha256 == second.sha256 != first.sha256


def test_install_refuses_metadata_missing_fields(tmp_path):
    src = make_folder(tmp_path / "src")
    raw = json.loads((src / METADATA_FILE).read_text())
    del raw["eval_metrics"]
    (src / METADATA_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="eval_metrics"):
        ModelRegistry(tmp_path / "reg").install(src)


def test_default_models_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "x"))
    assert default_models_dir() == tmp_path / "x"
    assert ModelRegistry().root == tmp_path / "x"
    monkeypatch.delenv("COVIDCT_MODELS_DIR")
    assert default_models_dir() == Path.home() / ".cache" / "covidct" / "models"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_models.add_parser(parser.add_subparsers(dest="command"))
    return cli_models.run(parser.parse_args(argv))


def test_cli_models_list_install_verify(tmp_path, capsys):
    reg_dir = str(tmp_path / "reg")
    assert _cli(["models", "list", "--models-dir", reg_dir]) == 0
    assert "none" in capsys.readouterr().out
    src = make_folder(tmp_path / "src")
    assert _cli(["models", "--models-dir", reg_dir, "install", str(src)]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert _cli(["models", "list", "--models-dir", reg_dir]) == 0
    out = capsys.readouterr().out
    assert "seg-test@0.1.0" in out and "DEMO" in out and "dice_lesion 0.500" in out
    assert _cli(["models", "verify", "--models-dir", reg_dir]) == 0
    tamper(tmp_path / "reg" / "seg-test" / "0.1.0" / WEIGHTS_FILE)
    assert _cli(["models", "verify", "--models-dir", reg_dir]) == ModelError.exit_code
    assert "FAIL seg-test@0.1.0" in capsys.readouterr().out
    tamper(src / WEIGHTS_FILE)
    assert _cli(["models", "install", str(src), "--models-dir", str(tmp_path / "r2")]) == ModelError.exit_code
    assert "sha256" in capsys.readouterr().err


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="expected one of"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            select_device("cuda")


def test_broken_folders_are_reported_not_used(tmp_path, capsys):
    reg = ModelRegistry(tmp_path / "reg")
    meta = reg.install(make_folder(tmp_path / "src"))
    (reg.folder(meta) / METADATA_FILE).write_text("{not json")
    assert reg.list() == []
    [(folder, why)] = reg.problems()
    assert folder == reg.folder(meta) and "not valid JSON" in why
    with pytest.raises(ModelError, match="cannot be read"):
        reg.resolve("segmentation")
    assert _cli(["models", "verify", "--models-dir", str(tmp_path / "reg")]) == ModelError.exit_code
    assert "FAIL" in capsys.readouterr().out


def test_models_are_listed_and_resolved_without_torch(tmp_path):
    # The Slicer panel lists the installed models before its first Analyze has installed torch.
    import subprocess
    import sys

    reg = ModelRegistry(tmp_path / "reg")
    reg.install(make_folder(tmp_path / "src"))
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "from CovidCTAnalysisLib.models.registry import ModelRegistry\n"
        f"reg = ModelRegistry({str(tmp_path / 'reg')!r})\n"
        "print([m.id for m in reg.list()], reg.resolve('segmentation').version)\n"
        "try:\n    reg.load(None, task='segmentation')\nexcept ImportError:\n    print('load needs torch')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['seg-test'] 0.1.0", "load needs torch"]


def _clean_env(home: Path) -> dict:
    """A new shell's environment: no COVIDCT_* variables, HOME a fresh folder."""
    import os

    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


def test_make_demo_installs_where_a_plain_covidct_looks(tmp_path):
    """`make demo` runs `$(BIN)/python -m training.demo` with the environment make gives it; training.demo installs
    into ``ModelRegistry(None)``. A stand-in python records that environment and installs a model there; then
    `covidct models list` in a new shell (no COVIDCT_MODELS_DIR) must find it in ~/.cache/covidct/models."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    home = tmp_path / "home"
    home.mkdir()
    src = make_folder(tmp_path / "src")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "make-env.txt"
    # the stand-in python: what `make demo` asked for, the models folder it was given, then training.demo's install
    (fake_bin / "python").write_text(
        "#!/bin/sh\n"
        f"echo \"$@|${{COVIDCT_MODELS_DIR-unset}}\" > {record}\n"
        f"exec {sys.executable} -c 'import sys; from CovidCTAnalysisLib.models.registry import ModelRegistry; "
        f"ModelRegistry(None).install(sys.argv[1])' {src}\n")
    (fake_bin / "python").chmod(0o755)
    stamp = tmp_path / "installed"  # the venv's stamp; -o: never rebuild it, whatever pyproject.toml's age
    stamp.touch()
    done = subprocess.run(["make", "-s", "-o", str(stamp), "demo", f"BIN={fake_bin}", f"STAMP={stamp}"], cwd=repo,
                          env=_clean_env(home), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert record.read_text().strip() == "-m training.demo|unset"
    covidct = [sys.executable, "-m", "CovidCTAnalysisLib.cli"]
    listed = subprocess.run(covidct + ["models", "list"], cwd=tmp_path, env=_clean_env(home),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert str(home / ".cache" / "covidct" / "models") in listed.stdout and "seg-test@0.1.0" in listed.stdout
    assert (home / ".cache" / "covidct" / "models" / "seg-test" / "0.1.0" / METADATA_FILE).is_file()


def test_no_model_message_names_the_folder_searched_and_why(tmp_path, monkeypatch):
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    from CovidCTAnalysisLib.phantom.generator import make_phantom, write_phantom

    image = write_phantom(make_phantom("covid", 1, size=(48, 48, 32)), tmp_path / "ph")["image"]
    run = subprocess.run([sys.executable, "-m", "CovidCTAnalysisLib.cli", "analyze", str(image), "-o",
                          str(tmp_path / "out"), "--progress", "none"], cwd=tmp_path, env=_clean_env(home),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == ModelError.exit_code
    err = run.stderr
    assert f"Searched {home / '.cache' / 'covidct' / 'models'} (the default" in err
    assert "make demo" in err and "covidct models install PATH" in err and "COVIDCT_MODELS_DIR" in err
    assert not (tmp_path / "out").exists()
    # the other two ways to choose the folder say which one was used
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "env-models"))
    with pytest.raises(ModelError, match=r"Searched .*env-models \(from \$COVIDCT_MODELS_DIR\)"):
        ModelRegistry().resolve("classification")
    with pytest.raises(ModelError, match=r"Searched .*given-models \(given with --models-dir\)"):
        ModelRegistry(tmp_path / "given-models").resolve("classification")


def _evaluated_registry(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A registry with a segmenter and a classifier whose eval_metrics are what training/evaluate.py records
    (made by training.metrics itself). The classifier's folder is written by hand: list and show read only
    metadata.json, and a ResNet-50 would take the test a minute to build."""
    import numpy as np

    from training.metrics import classification_metrics, summarise

    names = {1: "Left lung", 2: "Right lung", 3: "Lesion"}
    dices = {"c1": (0.8, 0.9, 0.5), "c2": (1.0, 0.9, 0.7)}
    per_case = [{lab: {"dice": d[lab - 1], "hd95_mm": 2.0 * lab, "truth_voxels": 10} for lab in names}
                for d in dices.values()]
    seg_metrics = {"per_class": summarise(per_case, names), "n_cases": 2, "measured_by": "training/evaluate.py",
                   "cases": [{"case_id": cid, **{names[k]: v for k, v in r.items()}}
                             for cid, r in zip(dices, per_case, strict=True)]}
    root = tmp_path / "reg"
    ModelRegistry(root).install(make_folder(tmp_path / "src", eval_metrics=seg_metrics))
    classes = ["Normal", "Pneumonia", "COVID-19"]
    truth = [0, 1, 2, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.1, 0.3]])
    cls_metrics = classification_metrics(truth, probs, classes)
    cls_metrics["cases"] = [{"patient_id": f"p{i}", "true": classes[t], "predicted": classes[int(np.argmax(p))],
                             "probabilities": p.tolist(), "slices": 20} for i, (t, p) in enumerate(zip(truth, probs, strict=True))]
    folder = root / "cls-real" / "2.0.0"
    folder.mkdir(parents=True)
    raw = {"id": "cls-real", "version": "2.0.0", "task": "classification", "architecture": {"name": "resnet50"},
           "sha256": "0" * 64, "trained_on": "a hand-written test entry", "preprocessing": {"input_size": 32},
           "intended_use": "Research use, not for diagnosis.", "labels": classes, "eval_metrics": cls_metrics,
           "demo": False}
    (folder / METADATA_FILE).write_text(json.dumps(raw))
    return root, seg_metrics, cls_metrics


def test_models_list_is_one_readable_line_per_model(tmp_path, capsys):
    root, seg, cls = _evaluated_registry(tmp_path)
    assert _cli(["models", "list", "--models-dir", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"models in {root} (given with --models-dir):"
    [cls_line] = [ln for ln in lines if "cls-real@2.0.0" in ln]
    [seg_line] = [ln for ln in lines if "seg-test@0.1.0" in ln]
    assert cls_line.split()[1:3] == ["classification", "-"]  # not a demo model
    assert f"accuracy {cls['accuracy']:.3f}, AUC {cls['macro_auc']:.3f} (4 patients)" in cls_line
    assert cls["accuracy"] == 0.75
    assert seg_line.split()[1:3] == ["segmentation", "DEMO"]
    assert "Dice Left lung 0.900 ± 0.100, Right lung 0.900 ± 0.000, Lesion 0.600 ± 0.100 (2 cases)" in seg_line
    assert not any("{" in ln or "p1" in ln for ln in lines)  # no nested dicts, no evaluation cases


def test_models_show_prints_the_details_down_to_every_case(tmp_path, capsys):
    root, seg, cls = _evaluated_registry(tmp_path)
    assert _cli(["models", "show", "cls-real", "--models-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cls-real@2.0.0  (classification)") and "DEMO" not in out
    assert "trained on:    a hand-written test entry" in out and "Research use, not for diagnosis." in out
    assert "MISS p3: true COVID-19, predicted Normal; p Normal 0.60, Pneumonia 0.10, COVID-19 0.30" in out
    assert sum(ln.strip().startswith(("ok", "MISS")) for ln in out.splitlines()) == 4
    assert "confusion (rows true, columns predicted: Normal, Pneumonia, COVID-19): 1 0 0 | 0 1 0 | 1 0 1" in out
    assert _cli(["models", "show", "seg-test@0.1.0", "--models-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "DEMO: trained on synthetic phantoms" in out and "sha256:" in out
    assert "c1: Left lung Dice 0.800, HD95 2.0 mm; Right lung Dice 0.900, HD95 4.0 mm; Lesion Dice 0.500" in out
    assert "c2: " in out
    assert _cli(["models", "show", "seg-test", "--json", "--models-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["eval_metrics"] == json.loads(json.dumps(seg))
    assert _cli(["models", "show", "seg-test@9.9", "--models-dir", str(root)]) == ModelError.exit_code
    err = capsys.readouterr().err
    assert "'seg-test@9.9' is not installed" in err and "cls-real@2.0.0, seg-test@0.1.0" in err
