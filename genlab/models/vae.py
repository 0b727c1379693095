"""Variational autoencoders (Kingma & Welling, 2014): ``model=vae`` and ``model=cvae``.

A convolutional encoder gives a diagonal Gaussian posterior q(z|x); a convolutional decoder
gives a distribution over the discrete 8-bit pixels p(x|z). Trained on the (beta-weighted)
negative ELBO; ``nll_bits`` is the importance-weighted bound (Burda et al., 2016) with k samples.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import LOG2, GenerativeModel
from genlab.nets.likelihoods import PIXEL_LIKELIHOODS, to_unit_range



def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU())


class VAE(GenerativeModel):
    family = "vae"
    likelihood = "bound"
    step_metrics = ("loss", "recon_bpd", "kl_bpd", "elbo_bpd")
    has_encoder = True

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        latent_dim: int = 16,
        channels: Sequence[int] = (64, 128),
        likelihood: str = "logistic",
        beta: float = 1.0,
        iw_samples: int = 64,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(tuple(data_shape), num_classes, optimizer, scheduler, conditional, vocab_size)
        require_positive("model", latent_dim=latent_dim, channels=channels, iw_samples=iw_samples)
        if beta < 0:
            raise ConfigError(f"model.beta={beta} must be a number >= 0 (the weight of the KL term)")
        if likelihood not in PIXEL_LIKELIHOODS:
            raise ConfigError(
                f"model.likelihood={likelihood!r} is not known; use one of {sorted(PIXEL_LIKELIHOODS)}"
            )
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.iw_samples = int(iw_samples)
        self.pixel_dist = PIXEL_LIKELIHOODS[likelihood]

        c, h, w = self.data_shape
        n_cond = num_classes if self.conditional else 0
        sizes = [(h, w)]
        for _ in channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self._sizes = sizes
        widths = [int(ch) for ch in channels]

        enc: list[nn.Module] = [_conv(c + n_cond, widths[0])]
        for c_in, c_out in zip([widths[0]] + widths[:-1], widths):
            enc += [_conv(c_in, c_out, stride=2), _conv(c_out, c_out)]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.to_posterior = nn.Linear(flat, 2 * self.latent_dim)

        self.from_latent = nn.Sequential(nn.Linear(self.latent_dim + n_cond, flat), nn.SiLU())
        dec: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            c_in, c_out = widths[level], widths[max(level - 1, 0)]
            dec += [nn.Upsample(size=sizes[level]), _conv(c_in, c_out), _conv(c_out, c_out)]
        self.decoder = nn.Sequential(*dec)
        self.to_pixels = nn.Conv2d(widths[0], c * self.pixel_dist.params_per_channel, 3, padding=1)
        self._widths = widths

    # ----- the primitives samplers and metrics use ---------------------------------------
    def _one_hot(self, y: Optional[Tensor]) -> Optional[Tensor]:
        labels = self.class_labels(y)
        return None if labels is None else F.one_hot(labels, self.num_classes).float()

    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z | x)."""
        h = to_unit_range(x)
        onehot = self._one_hot(y)
        if onehot is not None:
            h = torch.cat([h, onehot[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        mean, log_var = self.to_posterior(self.encoder(h)).float().chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Any:
        """p(x | z) as a pixel distribution (``log_prob``, ``mean_image``, ``sample``)."""
        onehot = self._one_hot(y)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        h = self.from_latent(z).view(-1, self._widths[-1], *self._sizes[-1])
        return self.pixel_dist(self.to_pixels(self.decoder(h)), self.data_shape[0])

    @torch.no_grad()
    def encode_mean(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.encode(x, y)[0]

    @torch.no_grad()
    def decode_latent(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.decode(z, y).mean_image()

    def prior_latents(self, n: int, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn(n, self.latent_dim, device=self.device)

    # ----- training ---------------------------------------------------------------------
    def _neg_elbo_terms(self, x: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction term -log p(x|z) and KL(q(z|x) || p(z)), in nats."""
        mean, log_var = self.encode(x, y)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        recon = -self.decode(z, y).log_prob(x).flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        return recon, kl

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        recon, kl = self._neg_elbo_terms(x, y)
        to_bpd = 1.0 / (self.num_dims * LOG2)
        loss = (recon + self.beta * kl).mean() * to_bpd
        if stage == "train":
            self.check_finite(loss=loss, recon=recon, kl=kl)
        self.log_stage(stage, {"loss": loss, "recon_bpd": recon.mean() * to_bpd, "kl_bpd": kl.mean() * to_bpd,
                               "elbo_bpd": (recon + kl).mean() * to_bpd}, x.shape[0])
        return loss


    # ----- likelihood -------------------------------------------------------------------
    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None, k: Optional[int] = None) -> Tensor:
        """Importance-weighted upper bound on -log2 p(x), with k posterior samples per image:
        -log2 (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). k=1 is the ELBO."""
        k = k or self.iw_samples
        mean, log_var = self.encode(x, y)
        std = torch.exp(0.5 * log_var)

        def log_weights(m: int) -> Tensor:
            eps = torch.randn(m, x.shape[0], self.latent_dim, device=x.device)
            z = mean + std * eps  # [m, B, D]
            log_px_z = self.decode(z.flatten(0, 1), repeat_batch(y, m)).log_prob(repeat_batch(x, m))
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + log_var).sum(-1)
            return log_px_z.flatten(1).sum(1).view(m, -1) + log_pz - log_qz

        return importance_weighted_nll_bits(log_weights, x.shape[0], k)


def repeat_batch(x: Optional[Tensor], m: int) -> Optional[Tensor]:
    """[B, ...] -> [m * B, ...]: m copies of the batch, copy-major (None stays None)."""
    return None if x is None else x.unsqueeze(0).expand(m, *x.shape).reshape(m * x.shape[0], *x.shape[1:])


def importance_weighted_nll_bits(log_weights: Callable[[int], Tensor], batch: int, k: int) -> Tensor:
    """-log2 (1/k) sum_i w_i per example (Burda et al., 2016), given ``log_weights(m)``: the
    log-weights log p(x, z_i) - log q(z_i | x) of m fresh posterior samples, shape [m, B].
    Samples are drawn in chunks so that one pass decodes about 4096 images."""
    per_pass = max(1, 4096 // batch)
    chunks = [log_weights(min(per_pass, k - start)) for start in range(0, k, per_pass)]
    return -(torch.logsumexp(torch.cat(chunks, 0), dim=0) - math.log(k)) / LOG2
