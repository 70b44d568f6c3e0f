# Two entry points: `make demo` (install, then dvc repro on the embedded default) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all params bench clean-outputs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, from its exact pin: a bare requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/dvc repro
	$(BIN)/dvc status
	$(BIN)/dvc metrics show

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Everything, the slow pipeline tests included.
test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m 'not gpu and not needs_weights'

# Recompose params.yaml from conf/ exactly as `dvc exp run` does (never edit params.yaml by hand).
params: $(STAMP)
	$(BIN)/python -m lofi_lora.params

clean-outputs:
	rm -rf outputs multirun
