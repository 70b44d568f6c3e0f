# Two entry points: `make demo` (install, then dvc repro on the embedded default) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc.yaml runs `python stages/...`: the venv's python must come first on PATH
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install sysdeps wheels demo test test-fast params clean-outputs bench-annotate

# VENV_FLAGS=--system-site-packages: the venv sees a CUDA torch that the box already has (README, GPU recipe)
VENV_FLAGS ?=
$(BIN)/python:
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, from its exact CPU pin (pyproject.toml holds only the tested range, so a GPU box keeps its CUDA build):
# a bare requirement would pull a multi-GB CUDA build. `TORCH_CPU=` (empty) keeps the torch the venv already sees.
TORCH_CPU ?= torch==2.13.0
$(STAMP): pyproject.toml | $(BIN)/python
	$(if $(TORCH_CPU),$(BIN)/pip install -q $(TORCH_CPU))
	$(BIN)/pip install -q -e '.[dev,optuna]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium renders the listening report in a test (Debian's package; root installs it, others are told).
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the report test"; fi; }

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/dvc repro
	$(BIN)/dvc status
	$(BIN)/dvc metrics show
	@echo "For the README's dvc commands (and the queue's workers, which start dvc from PATH): source $(VENV)/bin/activate"

# Python 3.12 and 3.13: every exact pin (and the CPU torch) has a wheel for them (asks PyPI, downloads nothing).
wheels: $(STAMP)
	$(BIN)/python scripts/check_wheels.py $(TORCH_CPU)

# Every CPU test, the slow ones included (the whole DVC pipeline in a fresh clone, a queued sweep), on every core:
# each module on one worker, the pipeline module first (tests/conftest.py); `-p no:xdist` runs them in one process.
test: $(STAMP) sysdeps wheels
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m 'not gpu and not needs_weights' -n auto --dist loadfile --no-loadscope-reorder

# The fast unit tests only (plain `pytest` selects the same).
test-fast: $(STAMP) sysdeps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Recompose params.yaml from conf/ exactly as `dvc exp run` does (never edit params.yaml by hand).
params: $(STAMP)
	$(BIN)/python -m lofi_lora.core.params

# Annotation accuracy on FluidSynth renders (benchmarks/NOTES.md); only this target installs FluidSynth + a GM soundfont.
# Soundfonts: FluidR3_GM, TimGM6mb, MuseScore General Lite (Debian); scores: music21's corpus (PyPI, the `bench` extra).
BENCH_SF = /usr/share/sounds/sf2/FluidR3_GM.sf2 /usr/share/sounds/sf2/TimGM6mb.sf2 /usr/share/sounds/sf3/MuseScore_General_Lite.sf3
bench-annotate: $(STAMP)
	@command -v fluidsynth >/dev/null 2>&1 && ls $(BENCH_SF) /usr/share/games/openttd/baseset/openmsx /usr/share/games/doom/freedoom2.wad /usr/share/mma/lib/stdlib >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth \
	    fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small openttd-openmsx freedoom mma >/dev/null; \
	  else echo "needs: sudo apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small openttd-openmsx freedoom mma"; exit 1; fi; }
	$(BIN)/python -c "import music21" 2>/dev/null || $(BIN)/pip install -q music21==10.5.0
	@# Held-out, human-written: chorales-B (Bach), fiddle (Ryan's Mammoth), mma (drummed); tuned on: chorales-A, gm, synth, synco; seen: openmsx, freedoom.
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/annotation_accuracy.py --sets chorales-B,fiddle,chorales-A --tracks 20 \
	  --workers 2 --compare --cache "$${TMPDIR:-/tmp}/lofi-lora-annotation-bench"
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/annotation_accuracy.py --sets gm,synth,synco --tracks 24 --workers 2 --compare \
	  --cache "$${TMPDIR:-/tmp}/lofi-lora-annotation-bench"
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/annotation_accuracy.py --sets openmsx --tracks 40 --workers 2 --compare \
	  --cache "$${TMPDIR:-/tmp}/lofi-lora-annotation-bench"
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/annotation_accuracy.py --sets freedoom --tracks 60 --workers 2 \
	  --cache "$${TMPDIR:-/tmp}/lofi-lora-annotation-bench"
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/annotation_accuracy.py --sets mma --tracks 40 --workers 2 \
	  --cache "$${TMPDIR:-/tmp}/lofi-lora-annotation-bench"

clean-outputs:
	rm -rf outputs multirun
