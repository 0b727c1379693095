"""Vector quantisation for VQ-VAE (van den Oord et al., 2017), codebook learned by exponential
moving averages (the paper's appendix; Razavi et al., 2019) with dead-code restarts.

The codebook is not trained by the optimizer: the first training batch places the codes on
random encoder outputs; then each training step moves every code to the EMA of the encoder
outputs assigned to it (Laplace-smoothed counts), and a code whose EMA count has fallen below
``restart_threshold`` (about 230 steps unused at decay 0.99) is moved onto a random encoder
output of the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class EMAQuantizer(nn.Module):
    def __init__(self, codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 restart_threshold: float = 0.1) -> None:
        super().__init__()
        self.codes, self.dim = codes, dim
        self.decay, self.eps, self.restart_threshold = decay, eps, restart_threshold
        codebook = torch.randn(codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code of every row of ``flat`` [N, D]."""
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                     + self.codebook.pow(2).sum(1)[None])
        return distances.argmin(1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes [B, h, w] -> vectors [B, D, h, w]."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z [B, D, h, w] -> (quantised z with the straight-through gradient, codes [B, h, w],
        the commitment loss per example ||z - sg(e)||^2 summed, the codebook perplexity)."""
        flat = z.movedim(1, -1).reshape(-1, self.dim).float()
        if self.training and not self.initialised:
            with torch.no_grad():
                self._restart(torch.ones(self.codes, dtype=torch.bool, device=flat.device), flat)
            self.initialised.fill_(True)
        indices = self.nearest(flat)
        quantised = F.embedding(indices, self.codebook).clone()  # the codes before this step's update
        if self.training:
            self.update(flat.detach(), indices)
        commitment = (flat - quantised).pow(2).view(z.shape[0], -1).sum(1)
        straight_through = flat + (quantised - flat).detach()
        usage = torch.bincount(indices, minlength=self.codes).float() / indices.numel()
        perplexity = torch.exp(-(usage * torch.log(usage.clamp(min=1e-10))).sum())
        out = straight_through.view(*z.shape[:1], *z.shape[2:], self.dim).movedim(-1, 1).to(z.dtype)
        return out, indices.view(z.shape[0], *z.shape[2:]), commitment, perplexity

    @torch.no_grad()
    def update(self, flat: Tensor, indices: Tensor) -> None:
        """One EMA step of the codebook from the encoder outputs ``flat`` and their codes
        (summed over all processes under DDP, so every rank keeps the same codebook)."""
        one_hot = F.one_hot(indices, self.codes).to(flat.dtype)
        counts, sums = one_hot.sum(0), one_hot.t() @ flat
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codes * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.restart_threshold
        if dead.any():
            self._restart(dead, flat)

    def _restart(self, dead: Tensor, flat: Tensor) -> None:
        """Move the codes ``dead`` onto random rows of ``flat`` (those of rank 0 under DDP)."""
        picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(picks, 0)
        self.codebook[dead] = picks
        self.embed_sum[dead] = picks
        self.cluster_size[dead] = 1.0
