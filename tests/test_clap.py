"""CLAP from a local folder: tiny random ClapModel saved to tmp (no download), windowing, scores, nulls."""
import numpy as np
import pytest
import torch

from lofi_lora.metrics.clap import ClapModelLocal, clap_scores, cosine_score, cut_windows, shuffled_pairs
from lofi_lora.metrics.embeddings import EmbeddingUnavailable, get_embedder

WORDS = ("lofi hip hop chill mellow jazzy piano vinyl crackle rain beat drums bass warm tape dusty "
         "slow night study relax guitar synth pad soft kick snare hat ambient").split()



def build_tiny_clap(path, vocab_size=400):
    """Save a randomly initialised tiny ClapModel + processor (byte-level BPE tokenizer) to `path`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    torch.manual_seed(0)
    bpe = ByteLevelBPETokenizer()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    path.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(path))
    tok = RobertaTokenizerFast(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    assert len(tok) > 100
    fe = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=10,
                              fft_window_size=1024, padding="repeatpad", truncation="rand_trunc",
                              frequency_min=50, frequency_max=14000)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=80, projection_dim=16),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], hidden_size=32, patch_embeds_hidden_size=16,
                          window_size=8, spec_size=256, num_mel_bins=64, enable_fusion=False, projection_dim=16),
        projection_dim=16)
    ClapModel(cfg).eval().save_pretrained(str(path))
    ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    return build_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny-clap")


def _noise(seconds, seed, sr=48000):
    return (0.1 * np.random.default_rng(seed).normal(size=(2, int(seconds * sr)))).astype(np.float32)


def test_cut_windows_fixed_length_no_random_crop():
    w = 100
    y = np.arange(350, dtype=float)
    wins = cut_windows(y, w, 50)
    assert [x.size for x in wins] == [100, 100, 100, 100]
    np.testing.assert_array_equal(wins[3][:50], y[300:]) and np.testing.assert_array_equal(wins[3][50:], y[300:])
    assert len(cut_windows(np.arange(320.0), w, 50)) == 3  # 20-sample tail dropped
    short = cut_windows(np.arange(30.0), w, 50)  # shorter than one window: repeat-padded
    assert len(short) == 1 and short[0].size == 100


def test_unavailable_clap_is_labelled(tmp_path):
    with pytest.raises(EmbeddingUnavailable, match="eval.clap_path is null"):
        ClapModelLocal(None)
    with pytest.raises(EmbeddingUnavailable, match="config.json missing"):
        get_embedder("clap", {"clap_path": str(tmp_path)})


def test_tokenizer_guard(tiny_clap):
    with pytest.raises(EmbeddingUnavailable, match="not a real CLAP tokenizer"):
        ClapModelLocal(tiny_clap, min_vocab=1000)


def test_clap_local_deterministic_windows(tiny_clap):
    clap = ClapModelLocal(tiny_clap, min_vocab=100)
    x = _noise(23.0, 0)  # 10 + 10 + 3 s tail (< 5 s, dropped)
    w1, w2 = clap.embed_audio_windows(x, 48000), clap.embed_audio_windows(x, 48000)
    assert w1.shape == (2, 16)
    np.testing.assert_array_equal(w1, w2)  # no random crop anywhere
    np.testing.assert_allclose(np.linalg.norm(w1, axis=1), 1.0, atol=1e-5)
    # resampling to 48 kHz happens inside: the same audio at 44.1 kHz gives ~ the same embedding
    import soxr
    x44 = soxr.resample(x.T, 48000, 44100).T
    assert float(clap.embed_audio(x44, 44100) @ clap.embed_audio(x, 48000)) > 0.98
    t = clap.embed_text(["lofi hip hop", "dusty piano rain"])
    assert t.shape == (2, 16)


def test_clap_scores_with_baselines(tiny_clap):
    clap = ClapModelLocal(tiny_clap, min_vocab=100)
    gen = [(_noise(4.0, i), 48000) for i in range(4)]
    prompts = ["lofi hip hop", "dusty piano rain", "lofi hip hop", "warm tape bass"]
    res = clap_scores(clap, gen, prompts, holdout=gen[:2], holdout_captions=prompts[:2])
    for k in ("clap_score", "clap_score_shuffled", "clap_score_holdout"):
        assert -1.0 <= res[k]["mean"] <= 1.0 and res[k]["ci95"][0] <= res[k]["mean"] <= res[k]["ci95"][1]
    assert res["clap_score"]["n"] == 4 and res["clap_score_holdout"]["n"] == 2
    with pytest.raises(ValueError, match="prompts"):
        clap_scores(clap, gen, prompts[:3])


def test_clap_fd_embedder(tiny_clap):
    emb = get_embedder("clap", {"clap_path": str(tiny_clap), "clap_min_vocab": 100})
    assert emb.metric_id == "fad_clap" and emb.embed(_noise(12.0, 1), 48000).shape == (1, 16)


def test_cosine_and_shuffle_helpers():
    a = np.eye(3)
    assert cosine_score(a, a)["mean"] == pytest.approx(1.0)
    assert cosine_score(a, a[[1, 2, 0]])["mean"] == pytest.approx(0.0)
    p = ["a", "b", "a", "c"]
    perm = shuffled_pairs(p, seed=0)
    assert sorted(perm) == [0, 1, 2, 3] and all(p[perm[i]] != p[i] for i in range(4))
