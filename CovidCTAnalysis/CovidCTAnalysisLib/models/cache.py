"""Loaded models kept for reuse within one process (``covidct batch`` workers load each model once).

A cached model is the one ``ModelRegistry.load`` returned after checking its sha256. The key holds the
registry folder, id, version, the expected sha256, the device, and the weight file's size and
modification time, so a model replaced on disk (``models install --force``) is loaded and checked
again rather than served stale.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from CovidCTAnalysisLib.models.metadata import WEIGHTS_FILE, ModelMetadata

if TYPE_CHECKING:
    from CovidCTAnalysisLib.models.registry import LoadedModel, ModelRegistry


class ModelCache:
    """``load(registry, meta, device)`` like ``registry.load(meta, device=device)``, once per key."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was actually read from disk (tests and logs)

    def _key(self, registry: ModelRegistry, meta: ModelMetadata, device: Any) -> tuple:
        stat = (registry.folder(meta) / WEIGHTS_FILE).stat()
        return (str(registry.root.resolve()), meta.id, meta.version, meta.sha256, str(device),
                stat.st_size, stat.st_mtime_ns)

    def load(self, registry: ModelRegistry, meta: ModelMetadata, device: Any) -> LoadedModel:
        key = self._key(registry, meta, device)
        with self._lock:
            if key not in self._models:
                self._models[key] = registry.load(meta, device=device)
                self.loads += 1
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
