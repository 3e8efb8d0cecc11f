"""Shared pytest fixtures. Area-specific fixtures live in the area's own test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real, public CTs); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data test: {SHARED_DATA} is absent (set COVIDCT_SHARED_DATA to its location)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """The CI machine has 2 cores; keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_demo_models(tmp_path_factory):
    """Tiny demo models trained, evaluated and installed the way ``make demo`` does it (``tiny_models.py``)."""
    from tiny_models import build_tiny_demo_models

    return build_tiny_demo_models(tmp_path_factory.mktemp("tiny-demo"))


@pytest.fixture(scope="session")
def tiny_interactive_models(tmp_path_factory) -> Path:
    """A registry holding a tiny interactive model trained by ``training.train_interactive`` (``tiny_models.py``)."""
    from tiny_models import build_tiny_interactive_model

    return build_tiny_interactive_model(tmp_path_factory.mktemp("tiny-interactive"))


@pytest.fixture
def tiny_models_dir(tiny_demo_models, monkeypatch) -> Path:
    """``$COVIDCT_MODELS_DIR`` pointed at the tiny demo models for one test (subprocesses inherit it)."""
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tiny_demo_models.root))
    return tiny_demo_models.root
