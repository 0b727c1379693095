"""Distributions over discrete 8-bit pixels, shared by the families that predict pixels.

``log_prob(x)`` takes the uint8 image and returns the log-probability (nats) of each
sub-pixel taking exactly that 8-bit value, so the sums are true discrete log-likelihoods.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def value_dtype(vocab_size: int) -> torch.dtype:
    """The integer dtype that holds 0..vocab_size-1: uint8 for 8-bit data, int32 beyond."""
    return torch.uint8 if vocab_size <= 256 else torch.int32


def to_unit_range(x: Tensor) -> Tensor:
    """uint8 0..255 -> float in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float in [-1, 1] -> nearest 8-bit value."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class DiscretizedLogistic:
    """A logistic per sub-pixel, integrated over each 8-bit bin (PixelCNN++ style, one component).

    ``mean`` is in the units of the [-1, 1] pixel range but unbounded, as in PixelCNN++: a mean
    below -1 (above 1) gives the edge bin 0 (255) nearly all the mass at any scale. (Squashed into
    (-1, 1) by a tanh, the mean of a mostly black MNIST pixel saturated at -1 within a few dozen
    steps, its gradient vanished and the VAE decoder stopped depending on z, even with no KL term.)
    ``log_scale`` is the log of the logistic's scale; both have the image's shape [B, C, H, W].
    """

    params_per_channel = 2

    def __init__(self, params: Tensor, channels: int) -> None:
        # float32 even under bf16 autocast: bin masses are differences of nearby CDF values
        self.mean, log_scale = params.float().split(channels, dim=1)
        self.log_scale = log_scale.clamp(min=-7.0)

    def log_prob(self, x: Tensor) -> Tensor:
        centered = to_unit_range(x) - self.mean
        inv_scale = torch.exp(-self.log_scale)
        upper = inv_scale * (centered + 1.0 / 255)
        lower = inv_scale * (centered - 1.0 / 255)
        log_cdf_upper = F.logsigmoid(upper)  # for x = 0: all mass below the upper edge
        log_sf_lower = F.logsigmoid(-lower)  # for x = 255: all mass above the lower edge
        mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        # In the far tails the difference of two CDFs underflows; use the density there.
        middle = inv_scale * centered
        log_density = middle - self.log_scale - 2 * F.softplus(middle) - math.log(127.5)
        log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_density)
        return torch.where(x == 0, log_cdf_upper, torch.where(x == 255, log_sf_lower, log_mass))

    def mean_image(self) -> Tensor:
        return to_uint8(self.mean)

    def sample(self) -> Tensor:
        u = torch.rand_like(self.mean).clamp(1e-5, 1 - 1e-5)
        return to_uint8(self.mean + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u)))


class Categorical:
    """A ``vocab_size``-way softmax per value; ``params`` are logits [B, C*V, *positions]
    ([B, C*V, H, W] for images, [B, C*V, T] for sequences)."""

    params_per_channel = 256

    def __init__(self, params: Tensor, channels: int, vocab_size: int = 256) -> None:
        b, _, *positions = params.shape
        self.vocab_size = vocab_size
        self.logits = params.float().view(b, channels, vocab_size, *positions).movedim(2, -1)  # [B, C, ..., V]

    def log_prob(self, x: Tensor) -> Tensor:
        log_p = torch.log_softmax(self.logits, dim=-1)
        return log_p.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def mean_image(self) -> Tensor:
        values = torch.arange(self.vocab_size, device=self.logits.device, dtype=self.logits.dtype)
        return (torch.softmax(self.logits, dim=-1) @ values).round().to(value_dtype(self.vocab_size))

    def sample(self) -> Tensor:
        return torch.distributions.Categorical(logits=self.logits).sample().to(value_dtype(self.vocab_size))


class Categorical256(Categorical):
    """The 256-way softmax of 8-bit pixels (the VAE's ``likelihood: categorical``)."""


PIXEL_LIKELIHOODS = {"logistic": DiscretizedLogistic, "categorical": Categorical256}
