# CovidCTAnalysis: the README commands. Each target builds .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pinned to the releases this project is tested with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Models: make demo installs into the folder covidct and the Slicer panel read by default,
# $COVIDCT_MODELS_DIR if set, else ~/.cache/covidct/models (CovidCTAnalysisLib/models/registry.py).

.PHONY: all venv demo test test-fast bench lint clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing the project (first time: a few minutes)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -q -U pip
	$(BIN)/pip install --progress-bar on $(TORCH_PINS)
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m training.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
