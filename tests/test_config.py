"""params.yaml is the composition of conf/ and fits the schema; a bad key, type or value stops a stage before it
does any work, with one line that names the key, the value and what is allowed."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lofi_lora.core.config import load_config
from lofi_lora.core.errors import ConfigError
from lofi_lora.core.params import REPO_ROOT, compose_params_yaml

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
def test_every_group_option_composes_and_fits_the_schema(override):
    params = yaml.safe_load(compose_params_yaml([override]))
    load_config(params)  # `???` values (paths to real weights) are allowed until a stage needs them
    group, option = override.split("=")
    if group != "experiment":
        assert params[group] is not None
    for section in ("paths", "data", "audio", "model", "lora", "train", "eval", "export"):
        assert section in params


def test_sweep_keys_exist():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for key in ("r", "alpha", "rslora", "dropout", "target_modules"):
        assert key in params["lora"]
    assert params["audio"]["max_clip_s"] > 0


def test_dvc_yaml_params_are_sections_of_params_yaml():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert (REPO_ROOT / "stages" / f"{name}.py").as_posix().endswith(stage["cmd"].split()[1]), name
        for p in stage.get("params", []):
            if isinstance(p, dict):  # a whole file (stage check)
                assert p == {"params.yaml": None}, name
                continue
            assert p.split(".")[0] in params, f"stage {name} declares unknown param {p}"


def _params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("change,message", [
    (lambda p: p["train"].update(keep_lasts=3), "`train.keep_lasts` is not a parameter; did you mean `train.keep_last`?"),
    (lambda p: p["train"].pop("keep_last"), "`train.keep_last` is missing"),
    (lambda p: p["export"]["tolerance"]["fp16"].update(cosin=0.9), "`export.tolerance.fp16.cosin` is not a parameter"),
    (lambda p: p["train"].update(lr="fast"), "`train.lr`: Value 'fast' of type 'str' is incompatible"),
    (lambda p: p["lora"].update(dropout=1.0), "`lora.dropout` = 1.0: must be a number in [0, 1)"),
    (lambda p: p["train"].update(schedule="cosin"), "`train.schedule` = 'cosin': must be one of cosine, linear, constant"),
    (lambda p: p["eval"].update(val_timesteps=[0.5, 1.5]), "`eval.val_timesteps[1]` = 1.5: must be a number in [0, 1]"),
    (lambda p: p["lora"].update(target_modules=["to_q", "attn.qkv"]),
     "`lora.target_modules[1]` = 'attn.qkv': must be one of to_q, to_k, to_v, to_out.0, gate_proj, up_proj, down_proj"),
    (lambda p: p["audio"].update(sample_rate=0), "`audio.sample_rate` = 0: must be a number >= 8000"),
    (lambda p: p.update(sweep={}), "`sweep` is not a parameter"),
    (lambda p: p["runtime"].update(gpu_memory_gib=0), "`runtime.gpu_memory_gib` = 0: must be a number > 0"),
])
def test_bad_parameters_name_the_key_value_and_range(change, message):
    params = _params()
    change(params)
    with pytest.raises(ConfigError) as e:
        load_config(params)
    assert message in str(e.value)


def test_typed_config_keeps_yaml_values_as_written():
    """int stays int and float stays float: the values feed config hashes that identify checkpoints and caches."""
    params = _params()
    cfg = load_config(params)
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg) == params
    assert type(cfg.lora.alpha) is int and type(cfg.train.lr) is float and list(cfg.train.betas) == [0.9, 0.999]


def _stage_in(tmp_path: Path, params: dict) -> Path:
    """stages/train.py beside a params.yaml of our own (the stage reads the params.yaml one folder above it)."""
    (tmp_path / "stages").mkdir()
    shutil.copy(REPO_ROOT / "stages" / "train.py", tmp_path / "stages" / "train.py")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / params["paths"]["metrics"] / "train.json"
    out.parent.mkdir(parents=True)
    out.write_text("previous output\n")
    return out


def _run_stage(tmp_path: Path, *overrides: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "LOFI_LORA_DEBUG": "1" if debug else "0"}
    return subprocess.run([sys.executable, str(tmp_path / "stages" / "train.py"), *overrides], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)


def _assert_refused(proc: subprocess.CompletedProcess, message: str, tmp_path: Path, previous: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {message}"], proc.stderr[-2000:]  # one line, no traceback
    assert previous.read_text() == "previous output\n"  # outputs untouched
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()  # no model or data read or made


def test_mistyped_key_in_params_yaml_stops_the_train_stage(tmp_path):
    params = _params()
    params["train"]["keep_lasts"] = params["train"].pop("keep_last")
    previous = _stage_in(tmp_path, params)
    proc = _run_stage(tmp_path)
    _assert_refused(proc, "`train.keep_lasts` is not a parameter; did you mean `train.keep_last`? "
                          "(schema: lofi_lora.core.schema.Train)", tmp_path, previous)


@pytest.mark.parametrize("override,message", [
    ("lora.alpha=-1", "`lora.alpha` = -1: must be a number > 0"),
    ("lora.r=0", "`lora.r` = 0: must be a number >= 1"),
    ("train.lr=-1", "`train.lr` = -1: must be a number > 0"),
])
def test_out_of_range_override_is_refused_before_outputs_are_touched(tmp_path, override, message):
    previous = _stage_in(tmp_path, _params())
    _assert_refused(_run_stage(tmp_path, override), message, tmp_path, previous)


def test_debug_switch_keeps_the_traceback(tmp_path):
    _stage_in(tmp_path, _params())
    proc = _run_stage(tmp_path, "lora.r=0", debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
