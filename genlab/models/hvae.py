"""Hierarchical VAE: ``model=hvae`` (a ladder / NVAE-style model, Vahdat & Kautz, 2020, reduced).

Latent groups z_1 .. z_L (each ``latent_channels`` maps at half the image resolution) are
generated top-down: p(z) = prod_l p(z_l | z_<l), each a diagonal Gaussian computed from the
decoder state, which every z_l updates through a residual cell. The posterior is bidirectional:
a bottom-up pass of residual cells over x gives one feature map per group, and
q(z_l | x, z_<l) combines it with the same top-down state (its mean a residual on the prior's).
p(x | z) is a distribution over the discrete 8-bit pixels (as in ``model=vae``).

Trained on recon + beta * sum_l KL_l, with beta warmed up linearly from 0 to 1 over
``kl_warmup_steps``; each group's KL is logged. ``nll_bits`` is the importance-weighted bound of
the VAE with k samples of the whole hierarchy. Sampling scales the standard deviation of every
conditional prior by the temperature (``sampler=prior``): z_l = mean_l + T std_l eps_l.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import LOG2, GenerativeModel
from genlab.models.vae import importance_weighted_nll_bits, repeat_batch
from genlab.nets.hvae import ResidualCell, gaussian_kl, gaussian_log_prob, split_gaussian
from genlab.nets.likelihoods import PIXEL_LIKELIHOODS, to_unit_range



class HierarchicalVAE(GenerativeModel):
    family = "vae"
    likelihood = "bound"
    step_metrics = ("loss", "recon_bpd", "kl_bpd", "elbo_bpd")

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        groups: int = 3,
        latent_channels: int = 4,
        channels: int = 32,
        cells: int = 1,
        likelihood: str = "logistic",
        kl_warmup_steps: int = 1000,
        iw_samples: int = 64,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        if conditional:
            raise ConfigError("model.conditional=true: model=hvae is unconditional; set model.conditional=false (model=cvae conditions)")
        super().__init__(data_shape, num_classes, optimizer, scheduler, conditional, vocab_size)
        require_positive("model", groups=groups, latent_channels=latent_channels, channels=channels,
                         cells=cells, iw_samples=iw_samples)
        if kl_warmup_steps < 0:
            raise ConfigError(f"model.kl_warmup_steps={kl_warmup_steps} must be >= 0 (0: no warm-up)")
        if likelihood not in PIXEL_LIKELIHOODS:
            raise ConfigError(f"model.likelihood={likelihood!r} is not known; use one of {sorted(PIXEL_LIKELIHOODS)}")
        self.groups, self.latent_channels = int(groups), int(latent_channels)
        self.kl_warmup_steps, self.iw_samples = int(kl_warmup_steps), int(iw_samples)
        self.pixel_dist = PIXEL_LIKELIHOODS[likelihood]
        self.step_metrics = (*self.step_metrics, *(f"kl{g}_bpd" for g in range(self.groups)))
        c, h, w = self.data_shape
        self.latent_size = ((h + 1) // 2, (w + 1) // 2)

        def stack() -> nn.Sequential:
            return nn.Sequential(*[ResidualCell(channels) for _ in range(cells)])

        self.stem = nn.Conv2d(c, channels, 3, stride=2, padding=1)
        self.encoder = nn.ModuleList([stack() for _ in range(self.groups)])  # bottom-up, one per group
        self.top = nn.Parameter(torch.zeros(1, channels, *self.latent_size))
        self.prior = nn.ModuleList([nn.Conv2d(channels, 2 * latent_channels, 3, padding=1) for _ in range(self.groups)])
        self.posterior = nn.ModuleList(
            [nn.Conv2d(2 * channels, 2 * latent_channels, 3, padding=1) for _ in range(self.groups)])
        self.from_latent = nn.ModuleList([nn.Conv2d(latent_channels, channels, 1) for _ in range(self.groups)])
        self.decoder = nn.ModuleList([stack() for _ in range(self.groups)])
        self.to_pixels = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, c * self.pixel_dist.params_per_channel, 3, padding=1),
        )
        for layer in (*self.prior, *self.posterior):  # start with p = N(0, 1) and q = p
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ----- the primitives samplers and metrics use ---------------------------------------
    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """One feature map per group, top group first."""
        h = self.stem(to_unit_range(x).to(self.top.dtype))
        features = []
        for cell in self.encoder:
            h = cell(h)
            features.append(h)
        return features[::-1]

    def _pixels(self, h: Tensor) -> Any:
        out = self.to_pixels(h)[:, :, : self.data_shape[1], : self.data_shape[2]]
        return self.pixel_dist(out, self.data_shape[0])

    def top_down(self, n: int, features: Optional[list[Tensor]] = None, eps: Optional[Tensor] = None,
                 ) -> tuple[Any, list[dict[str, Tensor]]]:
        """Run the decoder from the top: z_l from q(z_l | x, z_<l) when ``features`` (the
        bottom-up maps) are given, else from p(z_l | z_<l); ``eps`` [n, L * latent_channels,
        h, w] are the standard normal draws (fresh ones when None). Returns p(x | z) and, per
        group, its z and the prior's and posterior's (when encoding) mean and log-variance."""
        h = self.top.expand(n, -1, -1, -1)
        if eps is None:
            eps = torch.randn(n, self.groups * self.latent_channels, *self.latent_size, device=h.device)
        stats = []
        for g, e in enumerate(eps.chunk(self.groups, dim=1)):
            mean_p, log_var_p = split_gaussian(self.prior[g](h))
            group = {"mean_p": mean_p, "log_var_p": log_var_p}
            if features is None:
                z = mean_p + torch.exp(0.5 * log_var_p) * e
            else:
                delta, log_var_q = split_gaussian(self.posterior[g](torch.cat([h, features[g]], 1)))
                group.update(mean_q=mean_p + delta, log_var_q=log_var_q)
                z = group["mean_q"] + torch.exp(0.5 * log_var_q) * e
            group["z"] = z
            stats.append(group)
            h = self.decoder[g](h + self.from_latent[g](z.to(h.dtype)))
        return self._pixels(h), stats

    def prior_latents(self, n: int, temperature: float = 1.0) -> Tensor:
        """The standard normal draws of every group, scaled by the temperature."""
        return temperature * torch.randn(n, self.groups * self.latent_channels, *self.latent_size,
                                         device=self.device)

    def decode(self, eps: Tensor, y: Optional[Tensor] = None) -> Any:
        """p(x | z) for z drawn top-down from the prior with the draws ``eps``."""
        return self.top_down(eps.shape[0], eps=eps)[0]

    # ----- training ---------------------------------------------------------------------
    def group_kls(self, stats: list[dict[str, Tensor]]) -> list[Tensor]:
        """KL(q(z_l | x, z_<l) || p(z_l | z_<l)) of each group per example, in nats (closed form
        at the sampled z_<l: the KL terms of the ELBO)."""
        return [gaussian_kl(s["mean_q"], s["log_var_q"], s["mean_p"], s["log_var_p"]).flatten(1).sum(1)
                for s in stats]

    def kl_weight(self) -> float:
        if self.kl_warmup_steps == 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / self.kl_warmup_steps)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, _ = batch
        dist, stats = self.top_down(x.shape[0], self.bottom_up(x))
        recon = -dist.log_prob(x).flatten(1).sum(1)
        kls = self.group_kls(stats)
        kl = torch.stack(kls).sum(0)
        to_bpd = 1.0 / (self.num_dims * LOG2)
        beta = self.kl_weight() if stage == "train" else 1.0
        loss = (recon + beta * kl).mean() * to_bpd
        metrics = {"loss": loss, "recon_bpd": recon.mean() * to_bpd, "kl_bpd": kl.mean() * to_bpd,
                   "elbo_bpd": (recon + kl).mean() * to_bpd}
        metrics.update({f"kl{g}_bpd": k.mean() * to_bpd for g, k in enumerate(kls)})
        if stage == "train":
            self.check_finite(loss=loss, recon=recon, kl=kl)
            metrics["kl_weight"] = torch.tensor(beta)
        self.log_stage(stage, metrics, x.shape[0])
        return loss

    # ----- likelihood -------------------------------------------------------------------
    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None, k: Optional[int] = None) -> Tensor:
        """Importance-weighted upper bound on -log2 p(x) with k samples of the whole hierarchy:
        log w = log p(x | z) + sum_l [log p(z_l | z_<l) - log q(z_l | x, z_<l)]. k=1: the ELBO."""
        features = self.bottom_up(x)

        def log_weights(m: int) -> Tensor:
            dist, stats = self.top_down(m * x.shape[0], [repeat_batch(f, m) for f in features])
            log_w = dist.log_prob(repeat_batch(x, m)).flatten(1).sum(1)
            for s in stats:
                log_w = log_w + (gaussian_log_prob(s["z"], s["mean_p"], s["log_var_p"])
                                 - gaussian_log_prob(s["z"], s["mean_q"], s["log_var_q"])).flatten(1).sum(1)
            return log_w.view(m, x.shape[0])

        return importance_weighted_nll_bits(log_weights, x.shape[0], k or self.iw_samples)
