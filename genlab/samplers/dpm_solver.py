"""DPM-Solver++ (Lu et al., 2022), multistep second order ("2M"): ``sampler=dpm_solver``.

It integrates the diffusion ODE in the data-prediction form with log-SNR lambda = log(alpha /
sigma) (alpha = sqrt(abar), sigma = sqrt(1 - abar)) as the variable. From s to t, with
h = lambda_t - lambda_s and D the predicted x_0:

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D                      (first order)
    D   = x0_s + (x0_s - x0_prev) / (2 r),  r = (lambda_s - lambda_prev) / h     (second order)

where x0_prev is the prediction one step earlier (Algorithm 2, the midpoint form). The first
step is first order, the last one lands on the clean image (sigma = 0) with a first-order step,
which is the predicted x_0. ``steps`` network evaluations on timesteps spaced like diffusers'
``DPMSolverMultistepScheduler`` (``timestep_spacing="linspace"``): T-1 down to about T/steps.
10-25 steps reach the quality of DDIM with 50 or more.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.ddpm import DiffusionSampler


class DPMSolverSampler(DiffusionSampler):
    def __init__(self, steps: int = 20, order: int = 2, guidance_scale: float = 0.0, clip_x0: bool = True,
                 classes: Optional[Sequence[int]] = None) -> None:
        if int(steps) < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
        if order not in (1, 2):
            raise ConfigError(f"sampler.order={order!r}: use 1 (DDIM-like) or 2 (DPM-Solver++(2M))")
        super().__init__(guidance_scale, clip_x0, classes)
        self.steps = int(steps)
        self.order = int(order)

    def timesteps(self, model: GenerativeModel) -> list[int]:
        """The timestep indices where the network is evaluated, from T-1 down. Rounding repeats
        one where ``steps`` nears T; it is evaluated once (as diffusers does: a repeat is a step of
        length 0, and the second-order term divides by it)."""
        self._check_steps(model)
        T = model.timesteps
        return list(dict.fromkeys(round((T - 1) * j / self.steps) for j in range(self.steps, 0, -1)))

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None,
               noise: Optional[Tensor] = None) -> Tensor:
        x, labels = self._start(model, n, labels, noise)
        return to_uint8(self.solve(model, x, labels))

    def solve(self, model: GenerativeModel, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """x_0 (in [-1, 1], not quantized) from x_T = ``x``."""
        ts = self.timesteps(model)
        alpha = model.alphas_bar.sqrt()
        sigma = (1 - model.alphas_bar).sqrt()
        lam = torch.log(alpha) - torch.log(sigma)
        x0_prev: Optional[Tensor] = None
        for j, s in enumerate(ts):
            _, x0 = self._denoise(model, x, s, labels)
            if j == len(ts) - 1:  # to sigma = 0: x_0 itself (first order)
                return x0
            t = ts[j + 1]
            h = float(lam[t] - lam[s])
            d = x0
            if self.order == 2 and x0_prev is not None:
                r = float(lam[s] - lam[ts[j - 1]]) / h
                d = x0 + (x0 - x0_prev) / (2 * r)
            x = float(sigma[t] / sigma[s]) * x - float(alpha[t]) * math.expm1(-h) * d
            x0_prev = x0
        return x  # not reached: the loop returns at its last timestep
