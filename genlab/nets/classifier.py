"""The small classifiers whose features the FID "classifier" extractor uses (one per modality)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class ClassifierNet(nn.Module):
    """A small CNN over images: pairs of 3x3 convs, each pair followed by 2x2 max-pooling, global
    average pooling, a ``feature_dim`` ReLU layer (the FID features) and a linear head (the logits)."""

    def __init__(
        self, channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 64
    ) -> None:
        super().__init__()
        # 8x8 -> 1 stage, 28x28 -> 2, 32x32 -> 3, 64x64 -> 4: stop at ~4x4 feature maps
        stages = max(1, int(math.log2(image_size)) - 2)
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(stages):
            c_out = min(width * 2**i, 4 * width)
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
            ]  # fmt: skip
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images [B, C, H, W] -> (features [B, feature_dim], logits [B, num_classes])."""
        features = self.body(x.float() / 127.5 - 1.0)
        return features, self.head(features)
