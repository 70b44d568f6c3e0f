"""Whole-chain sweep: a Hydra multirun whose every job is a DVC experiment (not a dvc.yaml stage; README "Sweeps")."""
from pathlib import Path

from lofi_lora.experiments.sweep import run_sweep

if __name__ == "__main__":
    run_sweep(Path(__file__).resolve().parents[1])
