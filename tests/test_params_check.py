"""Stage `check` refuses a bad value before DVC removes any stage's outputs; the raw folder's unreadable entries
are named with the command that fixes them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from lofi_lora.check import stage as params_check
from lofi_lora.ingest import rawfiles
from lofi_lora.core.errors import ConfigError, DataError
from lofi_lora.core.params import REPO_ROOT


def test_every_stage_depends_on_check_which_reads_all_params():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert next(iter(stages)) == "check"
    assert stages["check"]["params"] == [{"params.yaml": None}]
    assert [o for o in stages["check"]["outs"]] == [{str(params_check.OUTPUT): {"cache": False, "persist": True}}]
    for name, stage in stages.items():
        if name != "check":
            assert str(params_check.OUTPUT) in stage["deps"], name


def test_a_bad_value_is_refused_with_its_key(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["lora"]["alpha"] = -1
    with pytest.raises(ConfigError, match="lora.alpha"):
        params_check.run_check(params, tmp_path / "ok")
    assert not (tmp_path / "ok").exists()


def test_raw_entries_dvc_cannot_read_name_the_rawfiles_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = Path("data/raw/local")
    raw.mkdir(parents=True)
    (raw / "a.wav").write_bytes(b"x")
    os.mkfifo(raw / "pipe.wav")
    (stale,) = rawfiles.unignored(raw)
    assert stale.reason == "not_a_file"
    assert "python -m lofi_lora.ingest.rawfiles data/raw/local" in rawfiles.unignored_message(raw, [stale])
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["raw_dir"] = str(raw)
    with pytest.raises(DataError, match="pipe.wav"):
        params_check.run_check(params, Path("ok"))
    rawfiles.ignore_refused(raw)  # what the named command does
    assert rawfiles.unignored(raw) == []
    params_check.run_check(params, Path("ok"))
    assert Path("ok").is_file()


@pytest.mark.slow
def test_dvc_exp_run_with_a_bad_value_leaves_every_output_in_place(tmp_path):
    """A clone whose pipeline is the real `check` stage and one stage after it with an output: the refused run
    stops at `check`, and the output is still there."""
    from helpers.clone import DVC, run

    repo = tmp_path / "repo"
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(repo)], cwd=REPO_ROOT)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    stages = {"check": stages["check"], "train": {
        "cmd": f"{Path(sys.executable).name} -c \"import pathlib; pathlib.Path('adapter').mkdir(exist_ok=True); "
               "pathlib.Path('adapter/weights').write_text('trained')\"",
        "deps": [str(params_check.OUTPUT)], "params": ["lora"], "outs": ["adapter"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (repo / "dvc.lock").unlink(missing_ok=True)
    run([DVC, "repro"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", "small pipeline"], cwd=repo)
    assert (repo / "adapter" / "weights").read_text() == "trained"
    refused = run([DVC, "exp", "run", "-S", "lora.alpha=-1"], cwd=repo, check=False)
    assert refused.returncode != 0
    assert "error: `lora.alpha` = -1" in refused.stderr + refused.stdout
    assert (repo / "adapter" / "weights").read_text() == "trained"
    run(["git", "checkout", "--", "params.yaml"], cwd=repo)
    assert run([DVC, "status"], cwd=repo).stdout.strip() in ("", "Data and pipelines are up to date.")
