"""The small classifiers whose features the FID "classifier" extractor uses (one per modality)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from genlab.modalities.audio import fft_size, log_spectrogram, mu_law_decode


def conv_body(
    conv: type[nn.Module], pool: type[nn.Module], global_pool: type[nn.Module], c_in: int, stages: int,
    width: int, feature_dim: int,
) -> nn.Sequential:  # fmt: skip
    """Stages of two 3-wide convs (ReLU) and a 2x max-pool, widths doubling from ``width`` up to
    4x; then global average pooling and a ``feature_dim`` ReLU layer (the FID features)."""
    layers: list[nn.Module] = []
    for i in range(stages):
        c_out = min(width * 2**i, 4 * width)
        layers += [
            conv(c_in, c_out, 3, padding=1), nn.ReLU(),
            conv(c_out, c_out, 3, padding=1), nn.ReLU(),
            pool(2),
        ]  # fmt: skip
        c_in = c_out
    return nn.Sequential(*layers, global_pool(1), nn.Flatten(), nn.Linear(c_in, feature_dim), nn.ReLU())


class ClassifierNet(nn.Module):
    """A small CNN over images: pairs of 3x3 convs, each pair followed by 2x2 max-pooling, global
    average pooling, a ``feature_dim`` ReLU layer (the FID features) and a linear head (the logits)."""

    def __init__(
        self, channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 64
    ) -> None:
        super().__init__()
        # 8x8 -> 1 stage, 28x28 -> 2, 32x32 -> 3, 64x64 -> 4: stop at ~4x4 feature maps
        stages = max(1, int(math.log2(image_size)) - 2)
        self.body = conv_body(nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, channels, stages, width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images [B, C, H, W] -> (features [B, feature_dim], logits [B, num_classes])."""
        features = self.body(x.float() / 127.5 - 1.0)
        return features, self.head(features)


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
