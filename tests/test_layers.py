"""The packages of src/lofi_lora import in one direction (docs/ARCHITECTURE.md draws it), and only the packages
named there import diffusers, peft and transformers."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "lofi_lora"
# a package may import its own modules and those of lower layers, never a sibling or a higher layer
LAYERS = [{"core"}, {"data", "model"}, {"synth", "ingest", "preprocess", "annotate", "dataset", "metrics"}, {"train", "check"},
          {"evaluate", "export"}, {"experiments", "pretrain"}, {"cli"}]
MODEL_LIBRARIES = {"diffusers": {"model", "train"}, "peft": {"train", "export"},
                   "transformers": {"model", "metrics"}}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _package(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _layer(pkg: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if pkg in layer)


def _modules():
    return [p for p in sorted(PKG.rglob("*.py")) if p.name != "__init__.py" or p.parent != PKG]


def test_imports_run_down_the_layers():
    wrong = []
    for path in _modules():
        own = _package(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "lofi_lora" and len(parts) > 1 and parts[1] != own and _layer(parts[1]) >= _layer(own):
                wrong.append(f"{path.relative_to(PKG)} imports {name}")
    assert not wrong, wrong


def test_only_the_named_packages_import_model_libraries():
    wrong = [f"{path.relative_to(PKG)} imports {name}" for path in _modules() for name in _imports(path)
             if name.split(".")[0] in MODEL_LIBRARIES and _package(path) not in MODEL_LIBRARIES[name.split(".")[0]]]
    assert not wrong, wrong


def test_at_most_ten_top_level_modules_and_every_stage_in_its_package():
    assert len(list(PKG.glob("*.py"))) <= 10
    stages = [p.stem for p in (PKG.parents[1] / "stages").glob("*.py") if p.stem != "sweep"]
    for stage in stages:
        pkg = "model" if stage == "base_model" else stage
        assert f"def run_{stage}(" in (PKG / pkg / "stage.py").read_text(), stage
