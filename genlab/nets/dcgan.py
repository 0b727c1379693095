"""DCGAN generator and discriminator (Radford et al., 2016), sized to any square resolution.

The generator maps a latent (plus a class embedding, concatenated, for a conditional model)
to a ``base x base`` feature map and doubles it with stride-2 transposed convolutions until
it reaches the image size; the discriminator mirrors it with stride-2 convolutions. ``base``
is the smallest size >= 4 reached by halving: 4 for 8x8 and 32x32, 7 for 28x28.
A conditional discriminator uses the projection of Miyato & Koyama (2018).

The generator is ``map`` (latent -> first feature map w: linear, batch norm, ReLU) followed by
``synthesise`` (w -> image); truncation works in w (see ``genlab.samplers.truncation``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils.parametrizations import spectral_norm

DISC_NORMS = ("batch", "layer", "spectral", "none")


def resolution_levels(image_size: int) -> tuple[int, int]:
    """(number of stride-2 levels, base size): halve while the size stays an integer >= 4."""
    levels, size = 0, int(image_size)
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        levels += 1
    if levels == 0:
        raise ValueError(
            f"image size {image_size} cannot be halved to a size >= 4; DCGAN needs an even size >= 8"
        )
    return levels, size


def _widths(width: int, levels: int, max_width: int) -> list[int]:
    """Feature widths from full resolution (index 0) down to the base map (index ``levels``)."""
    return [min(width * 2**i, max_width) for i in range(levels + 1)]


class Generator(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 100,
        width: int = 64,
        max_width: int = 512,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        channels, size, _ = image_shape
        levels, self.base = resolution_levels(size)
        widths = _widths(width, levels, max_width)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        z_dim = latent_dim * (2 if self.embed is not None else 1)
        self.project = nn.Sequential(
            nn.Linear(z_dim, widths[-1] * self.base**2, bias=False),
            nn.Unflatten(1, (widths[-1], self.base, self.base)),
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
        )
        ups: list[nn.Module] = []
        for c_in, c_out in zip(widths[:0:-1], widths[-2::-1]):
            ups += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.upsample = nn.Sequential(*ups)
        self.to_image = nn.Sequential(nn.Conv2d(widths[0], channels, 3, padding=1), nn.Tanh())

    def map(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Latents [B, latent_dim] (and labels [B]) -> the first feature map w [B, C, base, base]."""
        if self.embed is not None:
            if y is None:
                raise ValueError("a conditional generator needs class labels y")
            z = torch.cat([z, self.embed(y.long())], dim=1)
        return self.project(z)

    def synthesise(self, w: Tensor) -> Tensor:
        """First feature maps w -> images in [-1, 1]."""
        return self.to_image(self.upsample(w))

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Latents [B, latent_dim] (and labels [B]) -> images in [-1, 1]."""
        return self.synthesise(self.map(z, y))


class Discriminator(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        max_width: int = 512,
        num_classes: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in DISC_NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r}; use one of {DISC_NORMS}")
        channels, size, _ = image_shape
        levels, base = resolution_levels(size)
        widths = _widths(width, levels, max_width)
        sn = spectral_norm if norm == "spectral" else (lambda m: m)

        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers.append(sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm not in ("batch", "layer"))))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif norm == "layer":  # per-example normalisation: keeps the gradient penalty per example
                layers.append(nn.GroupNorm(1, c_out))
            layers.append(nn.LeakyReLU(0.2))
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = widths[-1] * base**2
        self.to_logit = sn(nn.Linear(flat, 1))
        self.embed = sn(nn.Embedding(num_classes, flat)) if num_classes > 0 else None

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images in [-1, 1] (and labels) -> one logit (critic value) per image, shape [B]."""
        h = self.features(x)
        out = self.to_logit(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("a conditional discriminator needs class labels y")
            out = out + (self.embed(y.long()) * h).sum(1)  # projection discriminator
        return out
