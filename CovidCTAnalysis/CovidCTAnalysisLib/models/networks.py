"""Network factories shared by inference and training.

Training imports these builders, so the architecture that is trained is the one
that is loaded; ``metadata.json`` records the keyword arguments given here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.errors import ModelError

DEFAULT_SEGMENTER_CHANNELS = (16, 32, 64, 128)
DEFAULT_SEGMENTER_STRIDES = (2, 2, 2)


def build_classifier(num_classes: int = len(CLASS_NAMES), pretrained_path: str | Path | None = None,
                     pretrained_sha256: str | None = None, zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50 with a ``num_classes`` head.

    ``pretrained_path`` is a local ImageNet ``state_dict`` (``.pth`` loaded with
    ``weights_only=True`` or ``.safetensors``); nothing is downloaded. Its 1000-class
    head is dropped and a fresh ``num_classes`` head is used. ``zero_init_residual``
    (torchvision's) starts every residual branch at zero, so each block begins as the
    identity: from scratch that trains markedly faster (Goyal et al. 2017).
    """
    from torchvision.models import resnet50

    model = resnet50(weights=None, zero_init_residual=zero_init_residual)
    if pretrained_path is not None:
        state = load_state_dict(pretrained_path, expected_sha256=pretrained_sha256)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ModelError(
                f"{pretrained_path} is not a torchvision ResNet-50 state_dict: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}; expected the keys of torchvision.models.resnet50()."
            )
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def build_segmenter(n_labels: int, channels: tuple[int, ...] = DEFAULT_SEGMENTER_CHANNELS,
                    strides: tuple[int, ...] = DEFAULT_SEGMENTER_STRIDES, num_res_units: int = 2,
                    dropout: float = 0.0) -> nn.Module:
    """MONAI 3D U-Net with one input channel (scaled HU) and ``n_labels`` outputs.

    ``n_labels`` counts the background: 4 for left lung/right lung/lesion, 2 for
    lesion-only data such as COVID-19-20.
    """
    from monai.networks.nets import UNet

    if n_labels < 2:
        raise ValueError(f"n_labels={n_labels}; expected >= 2 (background plus at least one label)")
    return UNet(spatial_dims=3, in_channels=1, out_channels=n_labels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)


def build_interactive(in_channels: int = 3, channels: tuple[int, ...] = DEFAULT_SEGMENTER_CHANNELS,
                      strides: tuple[int, ...] = DEFAULT_SEGMENTER_STRIDES, num_res_units: int = 2,
                      dropout: float = 0.0) -> nn.Module:
    """MONAI 3D U-Net for DeepGrow-style correction: inputs image, positive and negative guidance
    (``in_channels`` 3), plus the current lesion mask when 4; two outputs (background, lesion).

    The channel order is the metadata's ``preprocessing.channels`` (see ``models/interactive_settings.py``).
    """
    from monai.networks.nets import UNet

    if in_channels not in (3, 4):
        raise ValueError(f"in_channels={in_channels}; expected 3 (image, positive, negative) or 4 (+ current lesion)")
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=2, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load weights without pickle: safetensors, or ``torch.load(weights_only=True)``.

    When ``expected_sha256`` is given the file is refused on mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelError(f"sha256 of {path} is {actual}, expected {expected_sha256}; the file is corrupt or "
                             "was replaced. Reinstall the model.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure the same way
        raise ModelError(f"could not load {path} as a weights-only state_dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, expected a state_dict")
    return state
