"""params.yaml is the composition of conf/, every group option composes, and stages read params.yaml."""
from pathlib import Path

import pytest
import yaml

from lofi_lora.params import REPO_ROOT, compose_params_yaml

CONF = REPO_ROOT / "conf"


def test_params_yaml_equals_composition_of_conf():
    committed = (REPO_ROOT / "params.yaml").read_text()
    assert committed == compose_params_yaml(), "params.yaml drifted from conf/: run `make params` and commit"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{g.name}={o}" for g in sorted(CONF.iterdir()) if g.is_dir() for o in _options(g.name)],
)
def test_every_group_option_composes(override):
    params = yaml.safe_load(compose_params_yaml([override]))
    group, option = override.split("=")
    if group != "experiment":
        assert params[group] is not None
    for section in ("paths", "data", "audio", "model", "lora", "train", "eval", "export"):
        assert section in params


def test_sweep_keys_exist():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for key in ("r", "alpha", "rslora", "dropout", "target_modules"):
        assert key in params["lora"]
    assert params["audio"]["max_clip_seconds"] > 0


def test_dvc_yaml_params_are_sections_of_params_yaml():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert (REPO_ROOT / "stages" / f"{name}.py").as_posix().endswith(stage["cmd"].split()[1]), name
        for p in stage.get("params", []):
            assert p.split(".")[0] in params, f"stage {name} declares unknown param {p}"
