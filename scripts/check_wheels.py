"""Every exact pin of pyproject.toml has a binary wheel for Python 3.12 and 3.13 on this platform (`make test` runs it).

`make test` itself runs on the venv's Python (3.11 by default), so the other supported versions are checked by what
pip would install for them: `pip install --dry-run --no-deps --only-binary=:all: --python-version 3.1x` on the pins,
read back from pip's JSON report. Needs PyPI (metadata only, no wheel is downloaded). Prints one row per pin.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
VERSIONS = ("3.12", "3.13")


def exact_pins(pyproject: Path = PYPROJECT) -> list[str]:
    """`name==version` of the project's dependencies and extras (ranges such as torch's are left out)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [r.split(";")[0].strip() for r in reqs if "==" in r]


def wheels_for(pins: list[str], version: str) -> dict[str, str]:
    """{distribution name: wheel file} pip picks for Python `version`; raises SystemExit with pip's error."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                               "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                               "--python-version", version, "--report", str(report), *pins],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            raise SystemExit(f"Python {version}: no wheel for every exact pin:\n" + "\n".join(errors or [proc.stderr]))
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["download_info"]["url"].rsplit("/", 1)[1] for i in installs}


def main(extra: list[str]) -> None:
    pins = exact_pins() + extra  # extra: pins that live outside pyproject.toml (the Makefile's CPU torch)
    with ThreadPoolExecutor(len(VERSIONS)) as pool:  # both pip runs wait on PyPI: at once, half the time
        found = dict(zip(VERSIONS, pool.map(lambda v: wheels_for(pins, v), VERSIONS)))
    print(f"{'pin':34s} " + " ".join(f"{'Python ' + v:60s}" for v in VERSIONS))
    missing = []
    for pin in pins:
        name = pin.split("==")[0].lower()
        files = [found[v].get(name) or found[v].get(name.replace("_", "-")) for v in VERSIONS]
        print(f"{pin:34s} " + " ".join(f"{f or 'MISSING':60s}" for f in files))
        missing += [f"{pin} (Python {v})" for v, f in zip(VERSIONS, files) if not f]
    if missing:
        raise SystemExit("no wheel: " + ", ".join(missing))
    print(f"{len(pins)} exact pins: a wheel for Python {' and '.join(VERSIONS)} each")


if __name__ == "__main__":
    main(sys.argv[1:])
