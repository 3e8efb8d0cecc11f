"""Choosing the torch device for inference: ``--device auto|cpu|cuda``.

``auto`` takes CUDA when torch sees a GPU and the CPU otherwise. Asking for CUDA
on a machine without it is an error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import torch

from CovidCTAnalysisLib.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(requested: str = "auto") -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda`` (or ``cuda:N``) into a ``torch.device``.

    Raises ``InputError`` naming the request when CUDA is asked for but absent,
    or when the string is not one of the choices.
    """
    req = str(requested).strip().lower()
    if req == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if req == "cpu":
        return torch.device("cpu")
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA (CPU-only build)"
            raise InputError(
                f"--device {requested} was requested but no CUDA device is available "
                f"(torch {torch.__version__}, built with {built}); use --device cpu or --device auto."
            )
        dev = torch.device(req)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {requested}: there are only {torch.cuda.device_count()} CUDA device(s); "
                f"expected an index below {torch.cuda.device_count()}."
            )
        return dev
    raise InputError(f"--device {requested!r} is not understood; expected one of {DEVICE_CHOICES} or cuda:N.")


def describe_device(device: torch.device) -> str:
    """A short human/report string, e.g. ``cuda:0 (NVIDIA H100)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return f"cpu ({torch.get_num_threads()} threads)"
