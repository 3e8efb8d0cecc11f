"""Untrusted model folders (issue 13, part 3): each is refused at install with the field named, nothing of
it lands in the registry, and nothing in it is executed (weights are safetensors; no pickle is read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.models.metadata import MAX_METADATA_BYTES, METADATA_FILE, WEIGHTS_FILE
from CovidCTAnalysisLib.models.networks import build_segmenter, sha256_file
from CovidCTAnalysisLib.models.registry import ModelRegistry, save_model_folder

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def _metadata(**extra) -> dict:
    meta = {
        "id": "seg-untrusted", "version": "0.1.0", "task": "segmentation",
        "architecture": {"name": "monai.UNet", "kwargs": {"n_labels": 4, **TINY}},
        "trained_on": "nothing: untrained test network", "intended_use": "Research use, not for diagnosis.",
        "preprocessing": {"spacing_mm": [4.0, 4.0, 4.0], "roi_size": [16, 16, 16]},
        "labels": {"0": "background", "1": "Left lung", "2": "Right lung", "3": "Lesion"},
        "eval_metrics": {}, "demo": True,
    }
    meta.update(extra)
    return meta


@pytest.fixture()
def good(tmp_path) -> Path:
    torch.manual_seed(0)
    save_model_folder(build_segmenter(4, channels=(4, 8), strides=(2,), num_res_units=0), _metadata(), tmp_path / "m")
    return tmp_path / "m"


def _edit_metadata(folder: Path, **changes) -> None:
    raw = json.loads((folder / METADATA_FILE).read_text())
    raw.update(changes)
    (folder / METADATA_FILE).write_text(json.dumps(raw))


def _resign(folder: Path) -> None:
    """Make sha256 match again, as an attacker (or a careless export) would."""
    _edit_metadata(folder, sha256=sha256_file(folder / WEIGHTS_FILE))


def _refused(folder: Path, tmp_path: Path, match: str) -> None:
    root = tmp_path / "registry"
    with pytest.raises(ModelError, match=match):
        ModelRegistry(root).install(folder)
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert files == []  # nothing half-installed, no temp copy left behind


@pytest.mark.parametrize("field", ["id", "version"])
@pytest.mark.parametrize("value", ["../../escape", "a/../../b", "/abs/path", ".hidden"])
def test_ids_and_versions_that_climb_out_are_refused(good, tmp_path, field, value):
    _edit_metadata(good, **{field: value})
    _refused(good, tmp_path, "cannot be a folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_a_huge_metadata_file_is_refused_unread(good, tmp_path):
    _edit_metadata(good, description="x" * (MAX_METADATA_BYTES + 1))
    _refused(good, tmp_path, f"over the {MAX_METADATA_BYTES}")


@pytest.mark.parametrize("field", ["sha256", "architecture", "labels", "intended_use"])
def test_missing_fields_are_named(good, tmp_path, field):
    raw = json.loads((good / METADATA_FILE).read_text())
    del raw[field]
    (good / METADATA_FILE).write_text(json.dumps(raw))
    _refused(good, tmp_path, field)


def test_metadata_that_is_not_json_text_is_refused(good, tmp_path):
    (good / METADATA_FILE).write_bytes(b"\xff\xfe{not json")
    _refused(good, tmp_path, "not valid JSON")
    (good / METADATA_FILE).write_text("[" * 100_000)  # nesting deep enough to blow the parser's recursion
    _refused(good, tmp_path, "not valid JSON")


def test_an_architecture_that_does_not_fit_the_weights_is_refused_at_install(good, tmp_path):
    _edit_metadata(good, architecture={"name": "monai.UNet", "kwargs": {"n_labels": 4, "channels": [8, 16],
                                                                        "strides": [2], "num_res_units": 0}})
    _refused(good, tmp_path, r"tensor '.*' is F32 \[4, .*expects F32 \[8, ")


def test_weights_of_another_network_are_refused(good, tmp_path):
    _edit_metadata(good, architecture={"name": "monai.UNet", "kwargs": {"n_labels": 4, "channels": [4, 8],
                                                                        "strides": [2], "num_res_units": 1}})
    _refused(good, tmp_path, "missing tensors")


def test_weights_with_the_wrong_dtype_are_refused(good, tmp_path):
    from safetensors.torch import load_file, save_file

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(good / WEIGHTS_FILE)).items()}
    save_file(state, str(good / WEIGHTS_FILE))
    _resign(good)
    _refused(good, tmp_path, r"is F16 .* expects F32")


def test_a_pickle_named_safetensors_is_refused_and_never_unpickled(good, tmp_path):
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "EXECUTED",))

    torch.save({"w": Boom()}, good / WEIGHTS_FILE)
    _resign(good)
    _refused(good, tmp_path, "not a readable safetensors file")
    assert not (tmp_path / "EXECUTED").exists()
