"""The sweep's table, best row, plot and report page, from job records; the Optuna config composes."""
import json
import subprocess
import sys

import pytest

from lofi_lora.experiments.headline import headline_metrics
from lofi_lora.core.params import REPO_ROOT
from lofi_lora.experiments.sweep import best_index, job_overrides, write_summary


def _job(num, r, alpha, val_loss, clap=None, status="ok"):
    return {"job": num, "overrides": f"lora.r={r} lora.alpha={alpha}", "experiment": f"sw-{num}", "rev": "abc1234",
            "seed": 1234, "lora.r": r, "lora.alpha": alpha, "train_loss": 1.0, "best_step": 4, "val_loss": val_loss,
            "fd": 100.0 + num, "fad_vggish": None, "clap": clap, "int4_cosine": 0.9995,
            "adapter": f"{num}0123456789abcdef.dir", "status": status}


def test_headline_metrics_read_nested_keys_and_leave_absent_ones_empty():
    files = {"eval.json": {"eval": {"val_loss": 1.5, "fd_logmel128_v1": 900.0, "clap_score": None}},
             "export.json": {"export": {"int4": {"cosine": 0.999}}}}
    h = headline_metrics(files.get)
    assert h["val_loss"] == 1.5 and h["fd"] == 900.0 and h["int4_cosine"] == 0.999
    assert h["clap"] is None and h["train_loss"] is None  # no train.json: empty, not an error


def test_best_row_follows_the_metric_direction_and_skips_failed_jobs():
    jobs = [_job(0, 4, 8, 1.2, clap=0.30), _job(1, 8, 8, 1.1, clap=0.20), _job(2, 16, 8, float("nan"), clap=0.5),
            {"job": 3, "experiment": "sw-3", "status": "failed: parity"}]
    assert best_index(jobs, "val_loss") == 1  # min, nan ignored
    assert best_index(jobs, "clap") == 2      # max
    assert best_index(jobs, "fad_vggish") is None


def test_job_overrides_leave_out_sweep_and_hydra_settings():
    assert job_overrides(["lora.r=8", "sweep.metric=fd", "hydra.sweeper.n_trials=2", "+train.x=1"]) == \
        ["lora.r=8", "+train.x=1"]


def test_summary_writes_one_table_with_the_best_row_a_plot_and_a_page(tmp_path):
    jobs = [_job(0, 4, 8, 1.3), _job(1, 8, 8, 1.1), _job(2, 4, 16, 1.2), _job(3, 8, 16, 1.25),
            {"job": 4, "overrides": "lora.r=64", "experiment": "sw-4", "status": "failed: ERROR: parity"}]
    for j in jobs:
        (tmp_path / str(j["job"])).mkdir()
        (tmp_path / str(j["job"]) / "job.json").write_text(json.dumps(j))
    rows = write_summary(tmp_path, "val_loss")
    assert [r["best"] for r in rows] == ["", "*", "", "", ""]
    assert "fad_vggish" not in rows[0] and "clap" in rows[0]  # empty columns go, except the headline ones
    assert rows[1]["adapter"] == "1012345678"
    md = (tmp_path / "sweep.md").read_text()
    assert md.count("\n| ") == len(jobs) + 1 and "failed: ERROR: parity" in md
    assert "dvc exp branch sw-1 exp/sw-1" in md
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["best"] == 1 and saved["better"] == "min" and len(saved["jobs"]) == 5
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "index.html").read_text()
    assert "<img src='sweep.png'" in page and page.count("<tr") == len(jobs) + 1


def test_optuna_sweep_config_composes_with_the_pinned_hydra():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = subprocess.run([sys.executable, "stages/sweep.py", "--config-name", "sweep_optuna", "--cfg", "hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OptunaSweeper" in proc.stdout and "lora.r: choice(4, 8, 16, 32)" in proc.stdout


def test_significance_marks_only_differences_beyond_the_intervals():
    from lofi_lora.experiments.sweep import significance, table_rows, versus_base

    jobs = [_job(0, 1, 2, 1.3), _job(1, 4, 8, 1.2), _job(2, 16, 32, 1.1)]
    for j, (fd, lo, hi, d_lo, d_hi) in zip(jobs, [(900.0, 850.0, 950.0, -20.0, 30.0),
                                                  (700.0, 650.0, 760.0, -300.0, -150.0),
                                                  (740.0, 690.0, 800.0, -260.0, -100.0)]):
        j.update(fd=fd, fd_low=lo, fd_high=hi, fd_vs_base_low=d_lo, fd_vs_base_high=d_hi)
    assert significance(jobs, "fd") == ["worse", "best", "~"]  # 850 > 760: beyond; 690 < 760: overlap
    assert [versus_base(j, "fd") for j in jobs] == ["~", "better", "better"]
    rows = table_rows(jobs, "val_loss")
    assert rows[1]["fd"] == "700 [650, 760]" and rows[0]["fd_sig"] == "worse" and rows[2]["fd_vs_base"] == "better"
    assert "fd_low" not in rows[0] and "fd_vs_base_high" not in rows[0]
