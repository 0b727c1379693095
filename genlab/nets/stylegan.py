"""StyleGAN2 blocks (Karras et al., 2020): mapping network, modulated convolutions, skip
generator, residual discriminator with minibatch standard deviation.

Layers use the equalised learning rate (weights drawn from N(0, 1), scaled by He's constant at
run time). The synthesis starts from a learned constant at the base size that
``genlab.nets.dcgan.resolution_levels`` gives (4 for 8, 32, 64, ... pixels; 7 for 28) and
doubles it per level with bilinear upsampling. It takes one w per layer ("ws", [B, num_ws,
w_dim]): layer ``i`` reads ``ws[:, i]``; style mixing passes different w to different layers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genlab.nets.dcgan import _widths, resolution_levels

#: gain after a leaky ReLU so that activations keep unit variance
LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate; ``lr_mul`` slows it down (mapping net)."""

    def __init__(self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(d_in)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1.0 / math.sqrt(c_in * kernel * kernel)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``layers`` equalised linear layers at ``lr_mul``. Keeps the
    moving average of the w it produced in training (``w_avg``), the centre of truncation."""

    def __init__(self, z_dim: int, w_dim: int, layers: int = 8, lr_mul: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=lr_mul) for a, b in zip(dims[:-1], dims[1:]))
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = lrelu(layer(x))
        if self.training and torch.is_grad_enabled():
            self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return x


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True) -> Tensor:
    """Convolve each example of x [B, I, H, W] with ``weight`` [O, I, k, k] scaled per input
    channel by its style [B, I] and, with ``demodulate``, rescaled per output channel to unit
    norm: for inputs of unit variance the outputs then have unit variance (StyleGAN2, eq. 3).

    Computed as StyleGAN2's non-fused form: scale the input channels, one ordinary convolution
    with the shared weight, scale the output channels by the demodulation coefficients
    1 / sqrt(sum_{i,k} (s_i w_oik)^2); the same numbers as a grouped convolution with per-example
    weights, and faster on a CPU."""
    b = x.shape[0]
    out = F.conv2d(x * styles.view(b, -1, 1, 1).to(x.dtype), weight.to(x.dtype), padding=weight.shape[-1] // 2)
    if demodulate:
        coefficients = torch.rsqrt(styles.float().square() @ weight.float().square().sum((2, 3)).t() + 1e-8)
        out = out * coefficients.view(b, -1, 1, 1).to(out.dtype)
    return out


class ModulatedConv(nn.Module):
    """A modulated 3x3 (or 1x1) convolution whose style is an affine map of w."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int = 3, demodulate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.scale = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.demodulate = demodulate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return modulated_conv2d(x, self.weight * self.scale, self.affine(w), self.demodulate)


class StyleLayer(nn.Module):
    """(Upsample x2,) modulated 3x3 conv, per-pixel noise scaled by a learned per-layer weight,
    bias, leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, size: int, up: bool = False) -> None:
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(c_in, c_out, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(1, 1, size, size))  # for noise="const"
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: Tensor, w: Tensor, noise: str = "random") -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if noise == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return lrelu(x + self.bias.view(1, -1, 1, 1))


class ToImage(nn.Module):
    """Modulated 1x1 conv to the image channels, no demodulation (StyleGAN2's toRGB)."""

    def __init__(self, c_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv(c_in, channels, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, 1, 1)


NOISE_MODES = ("random", "const", "none")


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images (skip architecture: the upsampled image of the previous
    level plus this level's toRGB). Layer indices: the base conv reads w 0; level l's two
    convs read 2l+1 and 2l+2; a toRGB reads the index of the conv after it."""

    def __init__(self, image_shape: tuple[int, int, int], w_dim: int, width: int, max_width: int) -> None:
        super().__init__()
        channels, size, _ = image_shape
        self.levels, self.base = resolution_levels(size)
        widths = _widths(width, self.levels, max_width)[::-1]  # from the base map up to full resolution
        self.const = nn.Parameter(torch.randn(1, widths[0], self.base, self.base))
        self.convs = nn.ModuleList([StyleLayer(widths[0], widths[0], w_dim, self.base)])
        self.to_images = nn.ModuleList([ToImage(widths[0], channels, w_dim)])
        for level in range(1, self.levels + 1):
            s = self.base * 2**level
            self.convs.append(StyleLayer(widths[level - 1], widths[level], w_dim, s, up=True))
            self.convs.append(StyleLayer(widths[level], widths[level], w_dim, s))
            self.to_images.append(ToImage(widths[level], channels, w_dim))
        self.num_ws = len(self.convs) + 1

    def forward(self, ws: Tensor, noise: str = "random") -> Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        x = self.convs[0](x, ws[:, 0], noise)
        img = self.to_images[0](x, ws[:, 1])
        for level in range(1, self.levels + 1):
            x = self.convs[2 * level - 1](x, ws[:, 2 * level - 1], noise)
            x = self.convs[2 * level](x, ws[:, 2 * level], noise)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            img = img + self.to_images[level](x, ws[:, 2 * level + 1])
        return img


class Generator(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        z_dim: int = 128,
        w_dim: int = 128,
        mapping_layers: int = 4,
        width: int = 32,
        max_width: int = 256,
        mapping_lr_mul: float = 0.01,
    ) -> None:
        super().__init__()
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(image_shape, w_dim, width, max_width)
        self.num_ws = self.synthesis.num_ws

    def broadcast(self, w: Tensor) -> Tensor:
        """w [B, w_dim] -> ws [B, num_ws, w_dim] (one w for every layer); ws pass unchanged."""
        return w.unsqueeze(1).expand(-1, self.num_ws, -1) if w.dim() == 2 else w

    def forward(self, z: Tensor, noise: str = "random") -> Tensor:
        return self.synthesis(self.broadcast(self.mapping(z)), noise)


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """Append the mean over features of the standard deviation across groups of examples as one
    more channel (StyleGAN's minibatch standard deviation). Groups are the largest size
    <= ``group_size`` that divides the batch, so any batch size works."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.float().view(g, b // g, c, h, w)
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [b // g]
    y = y.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """conv, conv, 2x2 average pool, plus a 1x1 skip; the sum scaled by 1/sqrt(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(c_in, c_in, 3)
        self.conv2 = EqualConv2d(c_in, c_out, 3)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(lrelu(self.conv2(lrelu(self.conv1(x)))), 2)
        return (x + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Residual discriminator: fromRGB, one block per level down to the base size, minibatch
    standard deviation, a 3x3 conv and two linear layers to one logit per image."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, max_width: int = 256,
                 mbstd_group: int = 4) -> None:
        super().__init__()
        channels, size, _ = image_shape
        levels, base = resolution_levels(size)
        widths = _widths(width, levels, max_width)
        self.from_image = EqualConv2d(channels, widths[0], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(widths[-1] + 1, widths[-1], 3)
        self.fc = EqualLinear(widths[-1] * base * base, widths[-1])
        self.out = EqualLinear(widths[-1], 1)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images in [-1, 1] -> one logit per image, shape [B]."""
        h = self.blocks(lrelu(self.from_image(x)))
        h = lrelu(self.conv(minibatch_stddev(h, self.mbstd_group)))
        return self.out(lrelu(self.fc(h.flatten(1)))).squeeze(1)
