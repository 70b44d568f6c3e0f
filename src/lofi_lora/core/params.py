"""Compose conf/ into params.yaml exactly as `dvc exp run` does (dvc/utils/hydra.py::compose_and_dump)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def compose_params_yaml(overrides: list[str] | None = None, root: Path = REPO_ROOT) -> str:
    """Return the text DVC's Hydra composition writes to params.yaml for these overrides."""
    from dvc.utils.hydra import compose_and_dump  # the very function `dvc exp run` calls
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(out, str(root / "conf"), None, "config", str(root), overrides or [])
        return out.read_text()


def main() -> None:
    text = compose_params_yaml(sys.argv[1:])
    from lofi_lora.core.fsutil import atomic_write_text

    atomic_write_text(REPO_ROOT / "params.yaml", text)
    print(f"wrote {REPO_ROOT / 'params.yaml'}")


if __name__ == "__main__":
    main()
