"""The small spoken-audio classifier whose features the FID "classifier" extractor uses for audio."""

from __future__ import annotations

import math

from torch import Tensor, nn

from genlab.modalities.audio import fft_size, log_spectrogram, mu_law_decode
from genlab.nets.classifier import conv_body


class AudioClassifierNet(nn.Module):
    """A small classifier of mu-law clips: the decoded waveform's log spectrogram, 1-D convolutions
    over time with the frequency bins as channels, each pair followed by 2x max-pooling, global
    average pooling, a ``feature_dim`` ReLU layer (the FID features) and a linear head."""

    def __init__(
        self, channels: int, length: int, num_classes: int, vocab_size: int = 256, width: int = 32,
        feature_dim: int = 64, n_fft: int = 256,
    ) -> None:  # fmt: skip
        super().__init__()
        self.vocab_size, self.n_fft = vocab_size, fft_size(n_fft, length)
        bins, frames = self.n_fft // 2 + 1, length // (self.n_fft // 2) + 1
        stages = max(1, min(3, int(math.log2(frames)) - 1))
        self.body = conv_body(nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d, channels * bins, stages, width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 mu-law clips [B, C, T] -> (features [B, feature_dim], logits [B, num_classes])."""
        spec = log_spectrogram(mu_law_decode(x, self.vocab_size), self.n_fft)  # [B, C, F, frames]
        features = self.body(spec.flatten(1, 2))
        return features, self.head(features)
