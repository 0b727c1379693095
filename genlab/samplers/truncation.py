"""Truncation for generators (GAN family): trade diversity for typical samples.

``psi`` pulls each sample toward the generator's average, in the space of its first feature map
w (the output of the generator's mapping from the latent; StyleGAN truncates its mapped w the
same way): w' = mean_w + psi (w(z) - mean_w), z ~ N(0, I), where mean_w = E_z[w(z)] (per class
for a conditional model). psi = 1 is plain sampling; at psi = 0 every sample is the generator's
image at the mean w. Truncating z itself toward its mean 0 does not give an average image with
a batch-normed DCGAN: see ``GAN.mean_mapped``.

``threshold`` (optional, BigGAN style) draws each latent component from N(0, 1) truncated to
[-threshold, threshold] first.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.base import Sampler


class TruncationSampler(Sampler):
    families = ("gan",)
    grids = ("truncation", "style_mixing")

    def __init__(
        self, psi: float = 1.0, threshold: Optional[float] = None, classes: Optional[Sequence[int]] = None
    ) -> None:
        if not 0.0 <= psi <= 1.0:
            raise ConfigError(f"sampler.psi must be in [0, 1] (1 = no truncation), got {psi}")
        if threshold is not None and not threshold > 0:
            raise ConfigError(f"sampler.threshold must be > 0 or null, got {threshold}")
        self.psi = float(psi)
        self.threshold = None if threshold is None else float(threshold)
        self.classes = list(classes) if classes is not None else None

    def mapped(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        """The truncated first feature maps of n samples."""
        w = model.map_latents(model.prior_latents(n, self.threshold), labels)
        if self.psi == 1.0:
            return w
        mean = model.mean_mapped(labels)
        return mean + self.psi * (w - mean)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        return to_uint8(model.synthesise(self.mapped(model, n, labels)))

    def grid(self, model: GenerativeModel, name: str, rows: int, options: Any) -> tuple[Tensor, int]:
        """``truncation``: a row per latent, a column per psi in ``grid_psis``; ``style_mixing``:
        the styles of one row of latents mixed into another from layer ``grid_layer`` on."""
        if name == "truncation":
            psis = list(options.grid_psis)
            return truncation_grid(model, rows, psis, self.labels_for(model, rows)), len(psis)
        return style_mixing_grid(model, rows, options.grid_layer, self.psi), rows + 1


@torch.no_grad()
def truncation_grid(model: GenerativeModel, rows: int, psis: Sequence[float], labels: Optional[Tensor] = None) -> Tensor:
    """uint8 images [rows * len(psis), C, H, W]: row r is one latent truncated at each psi in
    turn (the same z across a row), so a row shows it moving toward the average image."""
    for psi in psis:
        if not 0.0 <= psi <= 1.0:
            raise ConfigError(f"grid_psis: {psi} is not in [0, 1] (1 = no truncation)")
    w = model.map_latents(model.prior_latents(rows), labels)
    mean = model.mean_mapped(labels)
    ws = torch.stack([mean + psi * (w - mean) for psi in psis], dim=1)  # [rows, len(psis), ...]
    return to_uint8(model.synthesise(ws.flatten(0, 1)))


@torch.no_grad()
def style_mixing_grid(model: GenerativeModel, rows: int, layer: Optional[int] = None, psi: float = 1.0) -> Tensor:
    """uint8 images [(rows + 1)^2, C, H, W], StyleGAN's style mixing figure: the first row holds
    ``rows`` column sources B, the first column ``rows`` row sources A (top left blank); cell
    (a, b) takes A's styles before ``layer`` and B's from ``layer`` on (the middle when None).
    Needs a model whose ``mix_styles`` works (model=stylegan; others raise ConfigError)."""
    mean = model.mean_mapped()
    w_a, w_b = (mean + psi * (model.map_latents(model.prior_latents(rows)) - mean) for _ in range(2))
    model.mix_styles(w_a, w_b, 0)  # refuses a model without styles to mix
    num_ws = model.num_ws
    layer = num_ws // 2 if layer is None else int(layer)
    if not 0 <= layer <= num_ws:
        raise ConfigError(f"grid_layer={layer}: this model has layers 0..{num_ws - 1} (0 = all B, {num_ws} = all A)")
    cells = [model.synthesise(model.mix_styles(w_a[i : i + 1].expand(rows, -1), w_b, layer)) for i in range(rows)]
    a, b = model.synthesise(w_a), model.synthesise(w_b)
    blank = torch.ones_like(a[:1])  # white
    grid = [torch.cat([blank, b])] + [torch.cat([a[i : i + 1], cells[i]]) for i in range(rows)]
    return to_uint8(torch.cat(grid))
