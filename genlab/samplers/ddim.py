"""DDIM sampling (Song et al., 2021): ``sampler=ddim``, a few steps on a subsequence of 0..T-1.

From timestep t to the previous chosen one s:
x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma^2) eps + sigma z, with
sigma = eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)). eta = 0 is
deterministic given x_T; eta = 1 over all T steps is the ancestral sampler with the posterior
variance (``sampler=ddpm sampler.variance=posterior``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.ddpm import DiffusionSampler


class DDIMSampler(DiffusionSampler):
    def __init__(self, steps: int = 50, eta: float = 0.0, guidance_scale: float = 0.0, clip_x0: bool = True,
                 classes: Optional[Sequence[int]] = None) -> None:
        if int(steps) < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
        if eta < 0:
            raise ConfigError(f"sampler.eta must be >= 0 (0 = deterministic, 1 = ancestral), got {eta}")
        super().__init__(guidance_scale, clip_x0, classes)
        self.steps = int(steps)
        self.eta = float(eta)

    def timesteps(self, model: GenerativeModel) -> list[int]:
        """The timestep indices visited, from T-1 down to 0, evenly spaced."""
        self._check_steps(model)
        return sorted({round(i * (model.timesteps - 1) / max(self.steps - 1, 1)) for i in range(self.steps)},
                      reverse=True)

    def step(self, model: GenerativeModel, x: Tensor, i: int, prev: int, labels: Optional[Tensor] = None,
             noise: Optional[Tensor] = None) -> Tensor:
        """x at timestep index ``prev`` (-1: the clean image) from x at index i."""
        eps, x0 = self._denoise(model, x, i, labels)
        ab_t = float(model.alphas_bar[i])
        ab_s = float(model.alphas_bar[prev]) if prev >= 0 else 1.0
        sigma = self.eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
        x = ab_s ** 0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * (torch.randn_like(x) if noise is None else noise)
        return x

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None,
               noise: Optional[Tensor] = None) -> Tensor:
        x, labels = self._start(model, n, labels, noise)
        ts = self.timesteps(model)
        for i, prev in zip(ts, [*ts[1:], -1]):
            x = self.step(model, x, i, prev, labels)
        return to_uint8(x)
