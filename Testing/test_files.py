"""files.py: atomic writes (a failure leaves the target as it was, no temp left behind) and JSON without NaN."""

from __future__ import annotations

import json
import math
import os

import pytest
from CovidCTAnalysisLib import files


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_on_success_and_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "image.nii.gz"
    target.write_text("old")
    with files.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        assert target.read_text() == "old"  # untouched while writing
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["image.nii.gz"]


def test_atomic_files_keep_the_usual_mode(tmp_path):
    files.write_text(tmp_path / "a.txt", "x")
    plain = tmp_path / "b.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(plain).st_mode


def test_write_json_refuses_nan_and_names_where_it_is(tmp_path):
    target = tmp_path / "metadata.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(ValueError, match=r"\$\.metrics\.dice\[1\]"):
        files.write_json(target, {"metrics": {"dice": [0.5, math.nan]}})
    with pytest.raises(ValueError, match="inf"):
        files.json_text([math.inf])
    assert json.loads(target.read_text()) == {"a": 1}
    assert listing(tmp_path) == ["metadata.json"]
    files.write_json(target, {"b": None, "a": 2}, sort_keys=True)
    assert target.read_text() == '{\n  "a": 2,\n  "b": null\n}\n'


def test_atomic_dir_swaps_whole_folders_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "model"
    with files.atomic_dir(target) as tmp:
        (tmp / "w").write_text("1")
        assert not target.exists()
    assert listing(target) == ["w"]
    with files.atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert listing(target) == ["v"]  # a swap, not a merge
    with pytest.raises(KeyboardInterrupt), files.atomic_dir(target) as tmp:
        (tmp / "u").write_text("3")
        raise KeyboardInterrupt
    assert listing(target) == ["v"]
    assert listing(tmp_path) == ["model"]  # no temp or moved-aside folder left


def test_replace_dir_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (dst / "old").write_text("kept")
    real = os.replace

    def failing(a, b):
        if str(a) == str(src):
            raise OSError("disk full")
        return real(a, b)

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(OSError):
        files.replace_dir(src, dst)
    assert (dst / "old").read_text() == "kept"


def test_the_three_json_writers_refuse_nan(tmp_path):
    """report.json, training's run files and a model folder's metadata.json all go through files.write_json."""
    from CovidCTAnalysisLib.errors import ModelError
    from CovidCTAnalysisLib.models.folder import save_model_folder
    from CovidCTAnalysisLib.results.outputs import write_json as write_report
    from test_model_registry import seg_metadata, tiny_segmenter

    from training.common import write_json as write_training_json

    for write in (lambda p: write_report({"dice": math.nan}, p), lambda p: write_training_json(p, {"dice": math.nan})):
        with pytest.raises(ValueError, match=r"\$\.dice"):
            write(tmp_path / "x.json")
    assert listing(tmp_path) == []
    with pytest.raises(ModelError, match=r"eval_metrics\.dice"):
        save_model_folder(tiny_segmenter(), seg_metadata(eval_metrics={"dice": math.nan}), tmp_path / "model")
    assert listing(tmp_path) == []  # no model folder, no temp folder
