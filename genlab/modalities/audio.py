"""Audio [C, T] in 8-bit mu-law: WAV files, a PNG of waveforms and spectrograms, audio sent to
W&B / TensorBoard, and a small spectrogram classifier for the FID "classifier" extractor.

Mu-law companding (WaveNet, van den Oord et al., 2016; ITU-T G.711) maps a waveform in [-1, 1]
to ``vocab_size`` levels, finer near silence where speech spends most of its time:
f(s) = sign(s) ln(1 + mu |s|) / ln(1 + mu), mu = vocab_size - 1, then quantised to 0..mu.

torch, Lightning and scipy are imported where they are used: the config asks
``AudioModality.default_extractor`` before any of them is imported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from genlab.modalities import Modality

if TYPE_CHECKING:
    from torch import Tensor, nn

#: samples drawn in the PNG (its rows); every sample gets a WAV file
PNG_ROWS = 8
#: clips sent to the loggers per call
LOGGED_CLIPS = 4


def mu_law_encode(wave: Tensor, vocab_size: int = 256) -> Tensor:
    """Waveform in [-1, 1] -> integers 0..vocab_size-1 (mu-law companded, rounded)."""
    import torch

    from genlab.nets.likelihoods import value_dtype

    mu = vocab_size - 1
    wave = wave.float().clamp(-1, 1)
    companded = torch.sign(wave) * torch.log1p(mu * wave.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu + 0.5).floor().clamp(0, mu).to(value_dtype(vocab_size))


def mu_law_decode(x: Tensor, vocab_size: int = 256) -> Tensor:
    """Integers 0..vocab_size-1 -> waveform in [-1, 1] (float32): the inverse of the companding."""
    import torch

    mu = vocab_size - 1
    companded = x.float() / mu * 2 - 1
    return torch.sign(companded) * ((1 + mu) ** companded.abs() - 1) / mu


def fft_size(n_fft: int, length: int) -> int:
    """``n_fft``, or the largest power of two that fits a shorter clip."""
    return min(n_fft, 2 ** int(math.log2(length)))


def log_spectrogram(wave: Tensor, n_fft: int = 256) -> Tensor:
    """Waveform [..., T] -> log(1 + |STFT|) [..., n_fft // 2 + 1, frames] (Hann window, hop n_fft/2)."""
    import torch

    n_fft = fft_size(n_fft, wave.shape[-1])
    flat = wave.reshape(-1, wave.shape[-1]).float()
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(flat, n_fft, hop_length=n_fft // 2, window=window, return_complex=True).abs()
    return torch.log1p(spec).reshape(*wave.shape[:-1], *spec.shape[1:])


class AudioModality(Modality):
    """Mu-law audio [C, T] at ``sample_rate`` Hz."""

    name = "audio"
    extractors = ("classifier",)
    data_dims = 2

    def __init__(self, data_shape: Sequence[int], vocab_size: int = 256, sample_rate: int = 8000) -> None:
        super().__init__(data_shape, vocab_size)
        self.sample_rate = int(sample_rate)

    def waveforms(self, samples: Tensor) -> Tensor:
        """Samples [N, C, T] -> float waveforms in [-1, 1]."""
        return mu_law_decode(samples.cpu(), self.vocab_size)

    def save(self, samples: Tensor, stem: Path, nrow: Optional[int] = None) -> list[Path]:
        """``stem.png`` (waveform and spectrogram of the first samples) and ``stem-NNN.wav`` for
        every sample (16-bit PCM; channels become the WAV's channels). ``nrow`` is not used."""
        import torch
        from scipy.io import wavfile

        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        waves = self.waveforms(samples)
        written = [self.plot(waves, stem.with_suffix(".png"))]
        for i, wave in enumerate(waves):
            path = stem.parent / f"{stem.name}-{i:03d}.wav"
            pcm = (wave.clamp(-1, 1) * 32767).round().to(torch.int16).T.numpy()  # [T, C]
            wavfile.write(path, self.sample_rate, pcm[:, 0] if pcm.shape[1] == 1 else pcm)
            written.append(path)
        return written

    def plot(self, waves: Tensor, path: Path) -> Path:
        """A PNG: one row per clip (up to PNG_ROWS), its waveform left, its log spectrogram right."""
        import matplotlib
        import numpy as np

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        rows = min(len(waves), PNG_ROWS)
        fig, axes = plt.subplots(rows, 2, figsize=(10, 1.6 * rows), squeeze=False)
        seconds = np.arange(waves.shape[-1]) / self.sample_rate
        for row in range(rows):
            wave = waves[row, 0]
            axes[row, 0].plot(seconds, wave.numpy(), linewidth=0.5)
            axes[row, 0].set_ylim(-1, 1)
            spec = log_spectrogram(wave)
            axes[row, 1].imshow(spec.numpy(), origin="lower", aspect="auto", cmap="magma",
                                extent=(0, seconds[-1], 0, self.sample_rate / 2))
        axes[-1, 0].set_xlabel("seconds")
        axes[-1, 1].set_xlabel("seconds (spectrogram, Hz)")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def log(self, samples: Tensor, loggers: Sequence[Any], step: int, tag: str = "samples",
            files: Sequence[Path] = ()) -> None:
        """The first clips: to TensorBoard as waveforms, to W&B as the WAV files ``save`` wrote
        (W&B encodes raw arrays only with the soundfile package, which genlab does not need)."""
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        waves = self.waveforms(samples[:LOGGED_CLIPS])
        wavs = [str(p) for p in files if Path(p).suffix == ".wav"][:LOGGED_CLIPS]
        for logger in loggers:
            if isinstance(logger, WandbLogger) and wavs:
                logger.log_audio(tag, wavs, step=step)
            elif isinstance(logger, TensorBoardLogger):
                for i, wave in enumerate(waves):
                    logger.experiment.add_audio(f"{tag}/{i}", wave[:1], step, sample_rate=self.sample_rate)

    def classifier_arch(self, num_classes: int) -> dict[str, int]:
        channels, length = self.data_shape
        return {"channels": channels, "length": length, "num_classes": int(num_classes),
                "vocab_size": self.vocab_size, "width": 32, "feature_dim": 64}

    @staticmethod
    def classifier_net(**arch: int) -> nn.Module:
        from genlab.nets.audio_classifier import AudioClassifierNet

        return AudioClassifierNet(**arch)
