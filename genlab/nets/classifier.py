"""The small image classifier whose features the FID "classifier" extractor uses, and the
convolutional body the classifiers of every modality share."""

from __future__ import annotations

import math

from torch import Tensor, nn


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
