"""The tolerance of the fresh-clone check (helpers/committed.py): float noise measured across two CPUs passes, a real
change and a changed source file fail."""
import json
import subprocess

from helpers.committed import RTOL, differences


def _repo(tmp_path, files: dict[str, str]):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "committed run")
    return tmp_path


def test_cross_cpu_noise_passes_and_a_real_change_does_not(tmp_path):
    # metrics/eval.json and export.json figures of the committed run and of the same commit on an AMD EPYC (issue 23)
    committed = {"eval": {"best_step": 40, "val_loss": 1.5222619771957397, "fd_logmel128_v1": 1081.2995947515228},
                 "export": {"fp32": {"passed": True, "rel_l2": 1.694670542994622e-06, "cosine": 0.9999999999986022}}}
    epyc = {"eval": {"best_step": 40, "val_loss": 1.5222620010375976, "fd_logmel128_v1": 1081.299577093658},
            "export": {"fp32": {"passed": True, "rel_l2": 1.6904075438429268e-06, "cosine": 0.9999999999986079}}}
    repo = _repo(tmp_path, {"metrics/eval.json": json.dumps(committed), "params.yaml": "seed: 0\n",
                            "metrics/train/plots/metrics/loss.tsv": "step\tloss\n1\t1.9734159708023071\n"})
    (repo / "metrics/eval.json").write_text(json.dumps(epyc))
    (repo / "metrics/train/plots/metrics/loss.tsv").write_text("step\tloss\n1\t1.973415732383728\n")
    assert differences(repo) == []

    changed = json.loads(json.dumps(epyc))
    changed["eval"]["val_loss"] *= 1 + 3 * RTOL  # e.g. another learning rate: percent, not the 8th digit
    (repo / "metrics/eval.json").write_text(json.dumps(changed))
    assert [p.split(":")[0] for p in differences(repo)] == ["metrics/eval.json.eval.val_loss"]

    (repo / "metrics/eval.json").write_text(json.dumps(epyc))
    (repo / "params.yaml").write_text("seed: 1\n")
    assert [p.split(":")[0] for p in differences(repo)] == ["params.yaml"]
