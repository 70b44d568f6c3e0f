"""Audio embedding back-ends for Fréchet distances, behind one interface.

Each back-end turns `[channels, frames]` audio at any rate into `[n, d]` vectors and carries the metric id
its distance is reported under: `fd_logmel128_v1` (handcrafted, always available, never called FAD),
`fad_vggish` (PyTorch VGGish, weights from a local file only) and `fad_clap` (CLAP audio tower, local folder
only). A back-end that cannot be built raises EmbeddingUnavailable with the reason; callers turn that into
a labelled null, never a number.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.data.audio import resample, to_channels
from lofi_lora.core.errors import EmbeddingUnavailable  # raised here; callers may import it from either module

log = logging.getLogger(__name__)


class Embedder:
    """Interface: `embed(audio, sample_rate) -> [n, d] float64`, plus labels that travel with every result."""

    metric_id: str = ""
    name: str = ""
    version: str = ""
    label: str = ""
    sample_rate: int = 16000
    pretrained: bool = False
    comparable_to_published: bool = False

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"metric_id": self.metric_id, "embedding": self.name, "embedding_version": self.version,
                "label": self.label, "sample_rate": self.sample_rate, "pretrained": self.pretrained,
                "comparable_to_published": self.comparable_to_published}

    def _mono(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        return resample(to_channels(audio, 1), int(sample_rate), self.sample_rate)[0].astype(np.float64)


class LogMel128(Embedder):
    """Handcrafted log-mel statistics: per 0.96 s window (0.48 s hop), mean and std of 64 log-mel bands.

    Deterministic and offline; measures spectral-envelope distribution shift, not perceptual quality. RMS
    normalisation keeps loudness from dominating. Frozen as v1: changing any constant needs a new version.
    """

    metric_id = "fd_logmel128_v1"
    name = "logmel128"
    version = "v1"
    label = "FD on handcrafted log-mel statistics (not FAD/VGGish; not comparable to published FAD)"
    sample_rate = 16000
    N_FFT, HOP, N_MELS, FMIN, FMAX = 400, 160, 64, 125.0, 7500.0
    WIN_FRAMES, WIN_HOP_FRAMES = 96, 48

    def __init__(self) -> None:
        from lofi_lora.core.librosa_guard import load
        librosa = load()

        self._mel = librosa.filters.mel(sr=self.sample_rate, n_fft=self.N_FFT, n_mels=self.N_MELS,
                                        fmin=self.FMIN, fmax=self.FMAX)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from lofi_lora.core.librosa_guard import load
        librosa = load()

        y = self._mono(audio, sample_rate)
        rms = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
        y = y / rms * 0.1 if rms > 1e-8 else y
        spec = np.abs(librosa.stft(y, n_fft=self.N_FFT, hop_length=self.HOP, center=False, window="hann")) ** 2
        logmel = np.log(self._mel @ spec + 1e-6)  # [64, frames]
        n = logmel.shape[1]
        if n < self.WIN_FRAMES:
            raise ValueError(f"{self.metric_id}: audio of {y.size / self.sample_rate:.2f} s is shorter than one "
                             f"{self.WIN_FRAMES * self.HOP / self.sample_rate:.2f} s window")
        starts = range(0, n - self.WIN_FRAMES + 1, self.WIN_HOP_FRAMES)
        return np.stack([np.concatenate([logmel[:, s:s + self.WIN_FRAMES].mean(1), logmel[:, s:s + self.WIN_FRAMES].std(1)])
                         for s in starts]).astype(np.float64)


# ---------------------------------------------------------------------------------------------- VGGish


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix(num_mel_bins: int = 64, num_spec_bins: int = 257, sample_rate: int = 16000,
                      fmin: float = 125.0, fmax: float = 7500.0) -> np.ndarray:
    """VGGish's mel filterbank: HTK mel scale, triangles built in the mel domain, DC bin zeroed. [bins, mels]."""
    spec_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spec_bins))
    edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), num_mel_bins + 2)
    m = np.empty((num_spec_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0.0, np.minimum((spec_mel - lo) / (c - lo), (hi - spec_mel) / (hi - c)))
    m[0, :] = 0.0
    return m


def vggish_examples(y16k: np.ndarray) -> np.ndarray:
    """VGGish input: 25 ms periodic-Hann frames, 10 ms hop, |rfft 512|, 64 mel, log(x + 0.01), 0.96 s examples.

    Returns [n_examples, 96, 64] float32 (non-overlapping examples, the reference front end's default).
    """
    win, hop, nfft = 400, 160, 512
    if y16k.size < win:
        return np.zeros((0, 96, 64), np.float32)
    n_frames = 1 + (y16k.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    mag = np.abs(np.fft.rfft(y16k[idx] * window, n=nfft))
    logmel = np.log(mag @ vggish_mel_matrix() + 0.01)
    n_ex = logmel.shape[0] // 96
    return logmel[: n_ex * 96].reshape(n_ex, 96, 64).astype(np.float32)


def build_vggish():
    """The VGGish network (Hershey et al. 2017) as torch modules, laid out like the common PyTorch port so
    its state dict (features.{0,3,6,8,11,13}, embeddings.{0,2,4}) loads; the final ReLU is left out (FAD
    uses the pre-activation 128-d embedding)."""
    import torch
    from torch import nn

    class VGGish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = 1
            for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                    c_in = int(v)
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                            nn.ReLU(True), nn.Linear(4096, 128))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 1, 96, 64]
            x = self.features(x).permute(0, 2, 3, 1).contiguous()  # NHWC flatten, as the TF original
            return self.embeddings(x.flatten(1))

    return VGGish()


class VGGish(Embedder):
    """VGGish 128-d per 0.96 s, from a local state dict (`torch.load(weights_only=True)` or safetensors)."""

    metric_id = "fad_vggish"
    name = "vggish"
    version = "pytorch-port-v1"
    label = "FAD (VGGish, PyTorch port, soxr resampling; close to but not identical with Google's TF FAD)"
    sample_rate = 16000
    pretrained = True

    def __init__(self, weights_path: str | Path | None, device: str = "cpu", sha256: str | None = None) -> None:
        """`sha256`: what the file must hash to (`eval.vggish_sha256`; None = not checked)."""
        import torch

        if not weights_path:
            raise EmbeddingUnavailable(self.metric_id, "no VGGish weights configured (eval.vggish_path is null)")
        path = Path(weights_path)
        if not path.is_file():
            raise EmbeddingUnavailable(self.metric_id, f"VGGish weights not found at {path}")
        from lofi_lora.core.fsutil import sha256_file

        self.weights_sha256 = sha256_file(path)
        if sha256 and self.weights_sha256 != sha256.lower():
            from lofi_lora.core.errors import ModelError

            raise ModelError(f"`eval.vggish_path` = {path}: sha256 {self.weights_sha256} is not `eval.vggish_sha256` = "
                             f"{sha256} (the published vggish-10086976.pth, README); another port: set "
                             "eval.vggish_sha256 to its hash")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("pproc")}  # PCA params are not used
        self.model = build_vggish()
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise EmbeddingUnavailable(self.metric_id, f"{path}: not a VGGish state dict ({str(e)[:300]})") from e
        self.model.eval().to(device)
        self.device = device

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights_sha256": self.weights_sha256}

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch

        ex = vggish_examples(self._mono(audio, sample_rate))
        if ex.shape[0] == 0:
            raise ValueError(f"{self.metric_id}: audio shorter than one 0.96 s example")
        with torch.no_grad():
            out = self.model(torch.from_numpy(ex)[:, None].to(self.device))
        return out.double().cpu().numpy()


class ClapAudio(Embedder):
    """CLAP audio-tower embeddings, one per fixed 10 s window (see metrics.clap)."""

    metric_id = "fad_clap"
    name = "clap"
    sample_rate = 48000
    pretrained = True

    def __init__(self, clap_path: str | Path | None, device: str = "cpu", min_vocab: int = 1000) -> None:
        from lofi_lora.metrics.clap import ClapModelLocal

        self.clap = ClapModelLocal(clap_path, device=device, min_vocab=min_vocab, metric_id=self.metric_id)
        self.version = self.clap.model_id
        self.label = f"FAD (CLAP audio embedding, {self.clap.model_id}, 10 s windows)"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.clap.describe()}

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.clap.embed_audio_windows(audio, sample_rate).astype(np.float64)


EMBEDDINGS = {"logmel": LogMel128, "vggish": VGGish, "clap": ClapAudio}
METRIC_IDS = {"logmel": LogMel128.metric_id, "vggish": VGGish.metric_id, "clap": ClapAudio.metric_id}


def get_embedder(kind: str, eval_cfg: Any = None, device: str = "cpu") -> Embedder:
    """Build the back-end `kind` (logmel | vggish | clap) from the eval config; EmbeddingUnavailable if it can't."""
    get = (lambda k: (eval_cfg or {}).get(k)) if eval_cfg is not None else (lambda k: None)
    if kind == "logmel":
        return LogMel128()
    if kind == "vggish":
        return VGGish(get("vggish_path"), device=device, sha256=get("vggish_sha256"))
    if kind == "clap":
        return ClapAudio(get("clap_path"), device=device, min_vocab=int(get("clap_min_vocab") or 1000))
    from lofi_lora.core.errors import ConfigError

    raise ConfigError(f"eval.embedding: unknown embedding {kind!r}; choose one of {sorted(EMBEDDINGS)}")
