"""Ancestral sampling from a latent-variable model's prior: z ~ N(0, T^2 I), x ~ p(x | z)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler, decoder_options


class PriorSampler(Sampler):
    families = ("vae",)

    def __init__(
        self, temperature: float = 1.0, pixels: str = "mean", classes: Optional[Sequence[int]] = None
    ) -> None:
        self.temperature, self.pixels = decoder_options(temperature, pixels)
        self.classes = list(classes) if classes is not None else None

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        z = model.prior_latents(n, self.temperature)
        dist = model.decode(z, labels)
        return dist.mean_image() if self.pixels == "mean" else dist.sample()
