"""Embedding back-ends: log-mel determinism and sensitivity, VGGish from a local state dict, unavailable -> error."""
import numpy as np
import pytest
import torch

from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.metrics.embeddings import (EmbeddingUnavailable, LogMel128, VGGish, build_vggish, get_embedder,
                                          vggish_examples, vggish_mel_matrix)
from lofi_lora.metrics.fad import frechet_distance, gaussian_stats



def _tone(freq, seconds=3.0, sr=48000, noise=0.01, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    y = 0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.normal(size=t.size)
    return np.stack([y, y]).astype(np.float32)


def test_logmel_shape_determinism_and_loudness_invariance():
    emb = get_embedder("logmel")
    assert emb.metric_id == "fd_logmel128_v1" and "not FAD" in emb.label and not emb.pretrained
    x = _tone(440)
    a, b = emb.embed(x, 48000), emb.embed(x, 48000)
    # 3 s at 16 kHz -> 298 frames -> windows of 96 frames every 48: 5 windows of 128-d
    assert a.shape == (5, 128) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(emb.embed(0.25 * x, 48000), a, atol=1e-6)  # RMS-normalised


def test_logmel_fd_separates_bright_from_dark():
    emb = LogMel128()
    dark = [emb.embed(_tone(f, seed=i), 48000) for i, f in enumerate((200, 220, 250, 300, 330, 260))]
    dark2 = [emb.embed(_tone(f, seed=10 + i), 48000) for i, f in enumerate((210, 230, 240, 310, 320, 270))]
    bright = [emb.embed(_tone(f, seed=20 + i, noise=0.2), 48000) for i, f in enumerate((3000, 3300, 3600, 4000, 4500, 5000))]
    ref = gaussian_stats(np.concatenate(dark))
    assert frechet_distance(gaussian_stats(np.concatenate(bright)), ref) > 5 * frechet_distance(
        gaussian_stats(np.concatenate(dark2)), ref)


def test_logmel_too_short_is_a_clear_error():
    with pytest.raises(ValueError, match="shorter than one"):
        LogMel128().embed(np.zeros((2, 4800), np.float32), 48000)


def test_vggish_unavailable_without_weights(tmp_path):
    with pytest.raises(EmbeddingUnavailable, match="eval.vggish_path is null") as e:
        get_embedder("vggish", {"vggish_path": None})
    assert isinstance(e.value, ModelError) and e.value.metric_id == "fad_vggish"
    with pytest.raises(EmbeddingUnavailable, match="not found"):
        get_embedder("vggish", {"vggish_path": str(tmp_path / "nope.pth")})
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(EmbeddingUnavailable, match="not a VGGish state dict"):
        VGGish(bad)
    with pytest.raises(ConfigError, match="unknown embedding"):
        get_embedder("openl3")


def test_vggish_front_end():
    m = vggish_mel_matrix()
    assert m.shape == (257, 64) and (m[0] == 0).all() and (m >= 0).all()
    ex = vggish_examples(np.zeros(16000 * 2))
    assert ex.shape == (2, 96, 64)  # 2 s -> 198 frames -> 2 examples


def test_vggish_loads_local_state_dict_weights_only(tmp_path):
    torch.manual_seed(0)
    net = build_vggish()
    sd = net.state_dict()
    assert sorted({k.split(".")[0] + "." + k.split(".")[1] for k in sd}) == [
        "embeddings.0", "embeddings.2", "embeddings.4", "features.0", "features.11", "features.13",
        "features.3", "features.6", "features.8"]
    path = tmp_path / "vggish.pth"
    torch.save(sd, path)
    emb = get_embedder("vggish", {"vggish_path": str(path)})
    out = emb.embed(_tone(440, seconds=2.0), 48000)
    assert out.shape == (2, 128) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, emb.embed(_tone(440, seconds=2.0), 48000))
    assert len(emb.describe()["weights_sha256"]) == 64


def test_vggish_file_is_checked_against_its_published_sha256(tmp_path):
    """A file that is not the configured one stops the stage naming both keys and the expected hash; the default
    is the published vggish-10086976.pth, whose name carries its hash's first 8 hex digits (torch.hub's rule)."""
    import hashlib

    from lofi_lora.core.config import compose_config

    published = compose_config(["eval=full", "eval.vggish_path=x", "eval.clap_path=null"]).eval.vggish_sha256
    assert published.startswith("10086976") and len(published) == 64
    path = tmp_path / "vggish.pth"
    torch.save(build_vggish().state_dict(), path)
    with pytest.raises(ModelError, match=f"eval.vggish_path.*eval.vggish_sha256` = {published}"):
        get_embedder("vggish", {"vggish_path": str(path), "vggish_sha256": published})
    own = hashlib.sha256(path.read_bytes()).hexdigest()
    assert get_embedder("vggish", {"vggish_path": str(path), "vggish_sha256": own.upper()}).weights_sha256 == own
