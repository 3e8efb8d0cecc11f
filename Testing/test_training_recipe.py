"""The training tools from the installed ``covidct``, and README's "Train on your own data" recipe.

``covidct train classifier|segmenter``, ``evaluate``, ``export`` and ``tune-aggregation`` forward to
``training.<module>.main``; the wheel ships ``training`` so they work from any folder once installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from CovidCTAnalysisLib.cli.main import main as covidct

REPO = Path(__file__).resolve().parents[1]


def test_train_help_is_the_training_scripts_own(capsys):
    with pytest.raises(SystemExit) as done:
        covidct(["train", "segmenter", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--roi" in out and "covid-19-20" in out  # train_segmenter's options, not covidct's
    with pytest.raises(SystemExit) as done:
        covidct(["evaluate", "--model-dir", "x", "--help"])  # --help after other options still reaches the tool
    assert done.value.code == 0 and "--held-out" in capsys.readouterr().out


def test_training_tool_errors_and_unknown_options(capsys):
    with pytest.raises(SystemExit) as done:
        covidct(["export", "--run-dir", "x"])  # the tool's own argparse: --out and --id are required
    assert done.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        covidct(["train", "detector"])
    assert done.value.code == 2 and "invalid choice: 'detector'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # other subcommands still refuse options they do not know
        covidct(["models", "list", "--epochs", "3"])
    assert done.value.code == 2 and "unrecognized arguments: --epochs 3" in capsys.readouterr().err


def test_a_missing_training_package_is_one_clear_error(monkeypatch, capsys):
    def not_installed(name):  # what importing training.<module> raises where the package is absent
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name=name.split(".")[0])

    monkeypatch.setattr("CovidCTAnalysisLib.cli.training.importlib.import_module", not_installed)
    assert covidct(["tune-aggregation", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the training tools (package 'training') are not installed") and "pip install" in err


@pytest.mark.slow  # builds and installs the wheel; each --help imports torch and MONAI (about 80 s on 2 cores)
def test_the_wheel_ships_the_training_tools_and_they_run_from_any_folder(tmp_path):
    """Build the wheel from the tracked sources, install it (no dependencies; torch and the rest are borrowed
    from this interpreter's site-packages) and run the training tools' --help from an unrelated folder."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "LICENSE", "CovidCTAnalysis/CovidCTAnalysisLib",
                            "training"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    # the working tree's core as it is (cli/main.py must import every module it lists, committed or not)
    for rel in (REPO / "CovidCTAnalysis" / "CovidCTAnalysisLib").rglob("*.py"):
        dst = src / rel.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(rel, dst)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                            "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("__init__", "train_classifier", "train_segmenter", "evaluate", "export", "tune_aggregation"):
        assert f"training/{module}.py" in names
    assert "CovidCTAnalysisLib/cli/training.py" in names
    assert not [n for n in names if n.startswith(("Testing/", "CovidCTAnalysisSlicer/"))]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed.pth").write_text("\n".join(borrowed) + "\n")  # a plain path line: no editable finder
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import training; print(training.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(site)), where  # the installed copy, not the checkout's
    for command, option in ((["train", "classifier"], "--dataset"), (["train", "segmenter"], "--roi"),
                            (["evaluate"], "--held-out"), (["export"], "--run-dir"), (["tune-aggregation"], "--model-dir")):
        run = subprocess.run([str(venv / "bin" / "covidct"), *command, "--help"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and option in run.stdout, (command, run.stderr[-2000:])
