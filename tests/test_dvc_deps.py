"""dvc.yaml names, for every stage, the code that stage runs: a change to any module it imports reruns it."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# reached from lofi_lora.cli only under Hydra's `-m` (a multirun's jobs and its summary table), never by `dvc repro`
MULTIRUN_ONLY = ("lofi_lora.experiments",)


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported(path: Path) -> set[str]:
    """lofi_lora modules `path` imports anywhere (function bodies included), with their parent packages."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    out = set()
    for n in names:
        if n.split(".")[0] == "lofi_lora" and not n.startswith(MULTIRUN_ONLY):
            parts = n.split(".")
            out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return out


def code_closure(script: Path) -> set[Path]:
    """Every file of src/ that `script` runs, found by following its imports."""
    seen: set[str] = set()
    todo = list(_imported(script))
    while todo:
        name = todo.pop()
        if name in seen or (f := _module_file(name)) is None:
            continue
        seen.add(name)
        todo += _imported(f)
    return {_module_file(n) for n in seen}


def test_every_stage_depends_on_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        script = ROOT / stage["cmd"].split()[-1]
        deps = [ROOT / str(d).split("#")[0].strip() for d in stage["deps"] if not str(d).startswith("$")]
        assert script in deps, f"stage {name}: its script {script.name} is not a dep"
        files = code_closure(script)
        assert files, f"stage {name}: no lofi_lora import found in {script}"
        gaps = sorted(str(f.relative_to(ROOT)) for f in files
                      if not any(f == d or d in f.parents for d in deps))
        if gaps:
            missing[name] = gaps
    assert not missing, f"dvc.yaml deps miss code the stage imports: {missing}"


def test_bytecode_beside_the_sources_does_not_change_a_stage_code_hash(tmp_path):
    """Python writes `__pycache__/*.pyc` beside the sources it imports (unless PYTHONDONTWRITEBYTECODE is set), so
    a user's `make demo` fills src/ with it; `.dvcignore` keeps it out of the stages' code hashes, or dvc.lock
    would change in every fresh clone (and differ per Python version)."""
    import subprocess
    import sys

    dvc = [sys.executable, "-m", "dvc"]
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin"}
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("X = 1\n")
    (tmp_path / ".dvcignore").write_text((ROOT / ".dvcignore").read_text())
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo ok\n    deps: [pkg]\n")
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "repro", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00bytecode")
    status = subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, env=env, check=True, capture_output=True,
                            text=True).stdout
    assert status.strip() == "{}", status
    (tmp_path / "pkg" / "a.py").write_text("X = 2\n")  # and a real change still counts
    status = subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, env=env, check=True, capture_output=True,
                            text=True).stdout
    assert "pkg" in status, status
