"""Blocks of the hierarchical VAE (NVAE-style, Vahdat & Kautz, 2020, much reduced).

Diagonal Gaussians are carried as (mean, log-variance) pairs; ``gaussian_kl`` and
``gaussian_log_prob`` are their closed forms, element-wise.
"""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor


class ResidualCell(nn.Module):
    """x + 0.1 * conv(SiLU(conv(SiLU(x)))): a residual cell of the encoder and the decoder
    (the small residual scale keeps a deep stack near the identity at initialisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * self.net(x)


def gaussian_kl(mean_q: Tensor, log_var_q: Tensor, mean_p: Tensor, log_var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per element, in nats."""
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mean_q - mean_p).pow(2)) / log_var_p.exp() - 1.0)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mean, var) per element, in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (z - mean).pow(2) / log_var.exp())


def split_gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
    """[B, 2k, ...] -> mean and log-variance (clamped to a safe range), float32."""
    mean, log_var = params.float().chunk(2, dim=1)
    return mean, log_var.clamp(-12.0, 8.0)
