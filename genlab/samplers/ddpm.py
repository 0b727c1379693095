"""Ancestral sampling of a diffusion model (Ho et al., 2020, Algorithm 2): ``sampler=ddpm``.

x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with mu_theta the mean of
the posterior q(x_{t-1} | x_t, x_0) at the predicted x_0 (the same as Algorithm 2's
(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) when x_0 is not clipped), sigma_t^2 =
beta_t or the posterior variance, and no noise at the last step. T network evaluations.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.models.diffusion import VARIANCES
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.base import Sampler


class DiffusionSampler(Sampler):
    """What the diffusion samplers share: the family, class labels, guidance and clipping."""

    families = ("diffusion",)

    def __init__(self, guidance_scale: float = 0.0, clip_x0: bool = True,
                 classes: Optional[Sequence[int]] = None) -> None:
        if guidance_scale < 0:
            raise ConfigError(f"sampler.guidance_scale must be >= 0 (0 = no guidance), got {guidance_scale}")
        self.guidance_scale = float(guidance_scale)
        self.clip_x0 = bool(clip_x0)
        self.classes = list(classes) if classes is not None else None

    def _start(self, model: GenerativeModel, n: int, labels: Optional[Tensor], noise: Optional[Tensor]):
        if labels is None:
            labels = self.labels_for(model, n)
        x = torch.randn(n, *model.data_shape, device=model.device) if noise is None else noise.to(model.device).float()
        return x, labels

    def _denoise(self, model: GenerativeModel, x: Tensor, i: int, labels: Optional[Tensor]):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        return model.denoise(x, t, labels, self.guidance_scale, self.clip_x0)


class DDPMSampler(DiffusionSampler):
    def __init__(self, variance: str = "beta", guidance_scale: float = 0.0, clip_x0: bool = True,
                 classes: Optional[Sequence[int]] = None) -> None:
        if variance not in VARIANCES:
            raise ConfigError(f"sampler.variance={variance!r} is not known; use one of {list(VARIANCES)}")
        super().__init__(guidance_scale, clip_x0, classes)
        self.variance = variance

    def step(self, model: GenerativeModel, x: Tensor, i: int, labels: Optional[Tensor] = None,
             noise: Optional[Tensor] = None) -> Tensor:
        """x_{t-1} from x_t at timestep index i (paper t = i + 1)."""
        _, x0 = self._denoise(model, x, i, labels)
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        mean, _ = model.posterior(x0, x, t)
        if i == 0:
            return mean
        var = model.posterior_var[i] if self.variance == "posterior" else model.betas[i]
        return mean + float(var) ** 0.5 * (torch.randn_like(x) if noise is None else noise)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None,
               noise: Optional[Tensor] = None) -> Tensor:
        x, labels = self._start(model, n, labels, noise)
        for i in reversed(range(model.timesteps)):
            x = self.step(model, x, i, labels)
        return to_uint8(x)
