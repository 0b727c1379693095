"""Sampling a model over discrete codes (VQ-VAE family): draw a code map, decode it.

``model=vqvae_prior`` draws the codes from its learned prior (code by code, at the temperature);
a stage-1 ``model=vqvae`` alone draws them uniformly, the prior its bound assumes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler, decoder_options


class CodeSampler(Sampler):
    families = ("vqvae",)

    def __init__(self, temperature: float = 1.0, pixels: str = "mean") -> None:
        self.temperature, self.pixels = decoder_options(temperature, pixels)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        dist = model.decode_codes(model.sample_codes(n, self.temperature))
        return dist.mean_image() if self.pixels == "mean" else dist.sample()
