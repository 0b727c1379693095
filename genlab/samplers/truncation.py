"""Latent truncation for generators (GAN family): sample z ~ N(0, I), pull it toward the mean.

``psi`` interpolates every latent toward the mean latent: z' = mean + psi (z - mean) (the
"truncation trick" of StyleGAN). psi = 1 is plain sampling; psi -> 0 trades diversity for
fidelity and at 0 every sample is the generator's output at the mean latent. ``threshold``
(optional, BigGAN style) first redraws each latent component whose magnitude exceeds it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.base import Sampler


class TruncationSampler(Sampler):
    families = ("gan",)

    def __init__(
        self, psi: float = 1.0, threshold: Optional[float] = None, classes: Optional[Sequence[int]] = None
    ) -> None:
        if not 0.0 <= psi <= 1.0:
            raise ConfigError(f"sampler.psi must be in [0, 1] (1 = no truncation), got {psi}")
        if threshold is not None and threshold <= 0:
            raise ConfigError(f"sampler.threshold must be > 0 or null, got {threshold}")
        self.psi = float(psi)
        self.threshold = None if threshold is None else float(threshold)
        self.classes = list(classes) if classes is not None else None

    def latents(self, model: GenerativeModel, n: int) -> Tensor:
        z = model.prior_latents(n)
        if self.threshold is not None:
            outside = z.abs() > self.threshold
            while outside.any():  # each redraw keeps a component with probability P(|N(0,1)| <= t) > 0
                z = torch.where(outside, model.prior_latents(n), z)
                outside = z.abs() > self.threshold
        mean = model.mean_latent()
        return mean + self.psi * (z - mean)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        return to_uint8(model.generate(self.latents(model, n), labels))
