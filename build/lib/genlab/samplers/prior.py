"""Ancestral sampling from a latent-variable model's prior: z ~ N(0, T^2 I), x ~ p(x | z)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler


class PriorSampler(Sampler):
    families = ("vae",)

    def __init__(
        self, temperature: float = 1.0, pixels: str = "mean", classes: Optional[Sequence[int]] = None
    ) -> None:
        if temperature < 0:
            raise ConfigError(f"sampler.temperature must be >= 0, got {temperature}")
        if pixels not in ("mean", "sample"):
            raise ConfigError(f"sampler.pixels must be 'mean' or 'sample', got {pixels!r}")
        self.temperature = float(temperature)
        self.pixels = pixels
        self.classes = list(classes) if classes is not None else None

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        z = model.prior_latents(n, self.temperature)
        dist = model.decode(z, labels)
        return dist.mean_image() if self.pixels == "mean" else dist.sample()
