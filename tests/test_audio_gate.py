"""The export's audio-level gate: each precision's samples scored against the holdout clips with a bootstrap
interval; a lossy precision whose FD leaves FP32's interval fails, one that sounds the same passes."""
import numpy as np

from lofi_lora.data import audio as audio_io
from lofi_lora.export import audio_gate

SR = 48000


def tone(rng, seconds, f0):
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    return np.stack([x, x]).astype(np.float32)


def test_a_precision_that_changes_the_music_fails_and_one_that_does_not_passes(tmp_path):
    rng = np.random.default_rng(0)
    refs = []
    for i in range(8):
        f = tmp_path / f"ref{i}.wav"
        audio_io.write(f, tone(rng, 4.0, 110 * (1 + i % 4)), SR)
        refs.append(str(f))
    jobs = [(i, rng.standard_normal((1, 4, 2)).astype(np.float32)) for i in range(16)]
    clean = {i: tone(np.random.default_rng(100 + i), 2.0, 110 * (1 + i % 4)) for i in range(16)}

    def generate(precision, index, noise):
        x = clean[index]
        if precision == "int4":  # a quantizer that broke the sound: much of it replaced by noise
            x = 0.3 * x + 0.2 * np.random.default_rng(index).standard_normal(x.shape).astype(np.float32)
        if precision == "int8":  # float noise far below what a listener (or the FD) can tell
            x = x + 1e-5 * np.random.default_rng(index).standard_normal(x.shape).astype(np.float32)
        return x[None]

    figs = audio_gate.score_precisions(generate, ["fp32", "int8", "int4"], jobs, refs, SR, replicates=200,
                                       level=0.95, seed=0)
    assert figs["fp32"]["fd_low"] <= figs["fp32"]["fd"] <= figs["fp32"]["fd_high"]
    assert audio_gate.passes(figs["int8"], figs["fp32"])
    assert not audio_gate.passes(figs["int4"], figs["fp32"]), figs
    assert figs["int4"]["fd_vs_fp32_low"] > 0 and figs["int8"]["fd_vs_fp32_low"] <= 0 <= figs["int8"]["fd_vs_fp32_high"]


def test_too_few_samples_or_clips_leave_the_decision_to_per_call_parity(tmp_path):
    from lofi_lora.export.stage import _apply_audio_gate

    fp32 = {"samples": 2, "reference_clips": 1, "fd": 771.0, "fd_low": 769.2, "fd_high": 774.4}
    assert "2 samples and 1 holdout clips" in audio_gate.underpowered(fp32)
    assert audio_gate.underpowered({**fp32, "samples": 24, "reference_clips": 8}) is None
    for p in ("fp32", "int8", "int4"):
        (tmp_path / p).mkdir()
    metrics = {"audio_gate": {"fp32": fp32, "int8": {**fp32, "fd": 768.0}, "int4": {**fp32, "fd": 767.7}},
               "precisions": {"fp32": {"passed": True, "parity_passed": True},
                              "int8": {"passed": True, "parity_passed": True},
                              "int4": {"passed": True, "parity_passed": False,
                                       "parity": {"rel_l2": 0.227, "cosine": 0.974}}}}
    _apply_audio_gate(metrics, tmp_path, "drop", tmp_path / "m.json")
    m = metrics["precisions"]
    assert m["int8"]["passed"] and m["int8"]["audio_gate_passed"] is None and (tmp_path / "int8").is_dir()
    assert not m["int4"]["passed"] and not (tmp_path / "int4").exists()  # outside the interval, but parity decides
    assert "holdout clips" in m["int4"]["audio_gate_reason"]
