"""One model folder: ``metadata.json`` + ``model.safetensors``. Writing, checking, loading.

Training calls ``save_model_folder``; the registry calls ``check_model_folder`` on
install and ``load_model_folder`` on every load. Weights are only read through
safetensors (no pickle), and only after their sha256 matched the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from CovidCTAnalysisLib.constants import BACKGROUND, LABEL_NAMES
from CovidCTAnalysisLib.errors import ModelError, OutputError
from CovidCTAnalysisLib.files import atomic_dir, write_json
from CovidCTAnalysisLib.models.interactive_settings import interactive_settings
from CovidCTAnalysisLib.models.metadata import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    read_metadata,
    validate_metadata,
)
from CovidCTAnalysisLib.models.networks import build_classifier, build_interactive, build_segmenter, sha256_file
from CovidCTAnalysisLib.models.transforms import validate_preprocessing

ARCHITECTURES = {"classification": ("resnet50",), "segmentation": ("monai.UNet",), "interactive": ("monai.UNet",)}


@dataclass(frozen=True)
class LoadedModel:
    """A verified model ready for inference (``module`` is in eval mode on its device)."""

    metadata: ModelMetadata
    module: torch.nn.Module
    path: Path


def _check_architecture(meta: ModelMetadata, where: str) -> None:
    arch = meta.architecture
    names = ARCHITECTURES[meta.task]
    if arch.get("name") not in names:
        raise ModelError(f"{where}: architecture.name={arch.get('name')!r} for task {meta.task}; expected one of {names}")
    if not isinstance(arch.get("kwargs", {}), dict):
        raise ModelError(f"{where}: architecture.kwargs={arch.get('kwargs')!r}; expected an object")


def segmentation_channel_labels(meta: ModelMetadata) -> dict[int, int]:
    """Output channel → our label value (0 background, 1 left lung, 2 right lung, 3 lesion).

    ``labels`` maps channel index (as a string) to a name from ``constants.LABEL_NAMES``
    or "background"; matching is by name, so a lesion-only model may say {"1": "Lesion"}.
    """
    labels = meta.labels
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"model {meta.id}: labels={labels!r}; expected {{'0': 'background', '1': 'Left lung', ...}}")
    by_name = {name.lower(): value for value, name in LABEL_NAMES.items()}
    by_name["background"] = BACKGROUND
    out: dict[int, int] = {}
    for key, name in labels.items():
        if str(name).lower() not in by_name:
            raise ModelError(f"model {meta.id}: label name {name!r} is unknown; expected one of "
                             f"{['background', *LABEL_NAMES.values()]}")
        try:
            out[int(key)] = by_name[str(name).lower()]
        except ValueError as e:
            raise ModelError(f"model {meta.id}: label key {key!r} is not a channel index") from e
    if sorted(out) != list(range(len(out))):
        raise ModelError(f"model {meta.id}: label channels {sorted(out)} are not 0..{len(out) - 1}")
    return out


def check_metadata(meta: ModelMetadata, where: str) -> None:
    """Checks beyond ``validate_metadata``: architecture, preprocessing, labels, for this core."""
    _check_architecture(meta, where)
    try:
        if meta.task == "interactive":
            interactive_settings(meta.preprocessing)
        else:
            validate_preprocessing(meta.task, meta.preprocessing)
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from e
    if meta.task == "classification":
        labels = meta.labels
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise ModelError(f"{where}: labels={labels!r}; expected a list of class names in output order")
    else:
        segmentation_channel_labels(meta)


def build_module(meta: ModelMetadata) -> torch.nn.Module:
    """The untrained network that ``meta.architecture`` describes (built by ``networks.py``)."""
    kwargs = dict(meta.architecture.get("kwargs") or {})
    try:
        if meta.task == "classification":
            kwargs.setdefault("num_classes", len(meta.labels))
            kwargs.pop("pretrained_path", None)  # the installed weights replace any ImageNet start
            kwargs.pop("pretrained_sha256", None)
            return build_classifier(**kwargs)
        if meta.task == "interactive":
            return build_interactive(**kwargs)
        kwargs.setdefault("n_labels", len(meta.labels))
        return build_segmenter(**kwargs)
    except TypeError as e:
        raise ModelError(f"model {meta.id}: architecture.kwargs {kwargs} do not fit the builder: {e}") from e


def check_model_folder(path: str | Path) -> ModelMetadata:
    """Read and check a model folder; its weights must exist and match ``sha256``."""
    path = Path(path)
    meta = read_metadata(path)
    check_metadata(meta, str(path / METADATA_FILE))
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{path} lacks {WEIGHTS_FILE}; a model folder holds {METADATA_FILE} and {WEIGHTS_FILE}")
    actual = sha256_file(weights)
    if actual != meta.sha256:
        raise ModelError(f"sha256 of {weights} is {actual}, but {METADATA_FILE} says {meta.sha256}; the weights are "
                         "corrupt or were replaced. Refusing this model; reinstall it from a good copy.")
    check_weights_fit(meta, weights)
    return meta


def check_weights_fit(meta: ModelMetadata, weights: Path) -> None:
    """Refuse weights whose tensor names, shapes or dtypes do not fit ``meta.architecture``.

    Reads only the safetensors header (no tensor data) and compares it with the network built on the
    meta device (no memory), so a folder that would fail to load is refused at install, not at analysis.
    """
    from safetensors import SafetensorError, safe_open

    with torch.device("meta"):
        expected = build_module(meta).state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file ({str(e)[:200]}); reinstall the model") from e
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{weights} does not fit architecture {meta.architecture}: missing tensors {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; the weights belong to another network")
    for key, tensor in expected.items():
        shape, dtype = found[key]
        want_dtype = _SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype))
        if shape != tuple(tensor.shape) or dtype != want_dtype:
            raise ModelError(f"{weights}: tensor {key!r} is {dtype} {list(shape)}, but architecture "
                             f"{meta.architecture.get('name')} expects {want_dtype} {list(tensor.shape)}; "
                             "the weights do not belong to this metadata")


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


_LOADS = {"count": 0}  # model folders loaded by this process (the interactive worker reports it with each answer)


def loads_so_far() -> int:
    """How many model folders this process has loaded (``load_model_folder`` calls that got as far as the weights)."""
    return _LOADS["count"]


def load_model_folder(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Verify (sha256) and load a model folder into its network, in eval mode on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = check_model_folder(path)
    state = load_file(str(path / WEIGHTS_FILE))
    _LOADS["count"] += 1
    # Build on the meta device and adopt the loaded tensors: skips a random initialisation of
    # ~25 M parameters that the weights would overwrite anyway (about a second on 2 cores).
    with torch.device("meta"):
        module = build_module(meta)
    _load_into(module, state, meta, str(path / WEIGHTS_FILE), assign=True)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module = build_module(meta)  # a tensor outside the state_dict: build for real
        _load_into(module, state, meta, str(path / WEIGHTS_FILE))
    module.eval().to(torch.device(device))
    return LoadedModel(metadata=meta, module=module, path=path)


def _load_into(module: torch.nn.Module, state: dict, meta: ModelMetadata, what: str, assign: bool = False) -> None:
    """``load_state_dict`` that reports any mismatch (names or shapes) as a ``ModelError``."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"{what} do not fit architecture {meta.architecture}: {str(e).splitlines()[1:3]}") from e
    if missing or unexpected:
        raise ModelError(f"{what} do not fit architecture {meta.architecture}: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def _fill_versions(metadata: dict[str, Any]) -> dict[str, Any]:
    out = dict(metadata)
    out.setdefault("pytorch_version", torch.__version__)
    try:
        import monai

        out.setdefault("monai_version", monai.__version__)
    except ImportError:  # pragma: no cover - monai is a dependency
        pass
    out.setdefault("network_data_format", {"weights": WEIGHTS_FILE, "format": "safetensors"})
    return out


def save_model_folder(module: torch.nn.Module, metadata: dict[str, Any], out_dir: str | Path,
                      force: bool = False) -> ModelMetadata:
    """Write ``out_dir/model.safetensors`` and ``out_dir/metadata.json`` (sha256 filled in).

    The folder is built next to ``out_dir`` and renamed into place, so a failure
    leaves no partial folder; an existing ``out_dir`` is refused unless ``force``.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise OutputError(f"model folder {out_dir} exists; pass force=True (--force) to replace it")
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        raw = _fill_versions(metadata)
        raw["sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        meta = validate_metadata(raw, where=f"metadata for {out_dir}")
        check_metadata(meta, f"metadata for {out_dir}")
        # Refuse weights that do not fit the architecture the metadata names: a folder must load.
        with torch.device("meta"):
            _load_into(build_module(meta), state, meta, "the module's weights", assign=True)
        try:
            write_json(tmp / METADATA_FILE, meta.raw, sort_keys=True)
        except ValueError as exc:  # NaN/inf (e.g. a Dice over empty masks): refused, not written
            raise ModelError(f"metadata for {out_dir}: {exc}") from exc
    return meta
