"""The UNet noise predictor of DDPM (Ho et al., 2020), sized by config.

Wide residual blocks with GroupNorm and a projected time (and class) embedding, self-attention
at chosen resolutions, strided-conv downsampling and nearest+conv upsampling, skip connections
from every block of the down path. Odd sizes (MNIST's 28 -> 14 -> 7 -> 4) work: each upsampling
goes back to its skip's size.

How the embedding enters a residual block matters. By default (``scale_shift_norm=True``, as in
Nichol & Dhariwal's improved-diffusion) it scales and shifts the normalised features,
``norm(h) * (1 + scale) + shift``, where no normalisation can remove it. Ho et al. add it as a
per-channel bias *before* the GroupNorm (``scale_shift_norm=False``): the norm subtracts each
group's mean of that bias, so with one channel per group the network would not see t or the
class at all; that mode exists only to build the paper's network, and the group sizes below
keep several channels in every group. With ``channels=128, channel_mult=(1, 2, 2, 2),
num_res_blocks=2, attention_resolutions=(16,), scale_shift_norm=False`` on 32x32 RGB it is the
paper's 35.7M-parameter CIFAR-10 network.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of (integer or real) timesteps t [B] (Transformer style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


#: the fewest channels a GroupNorm group holds, where the width allows it
MIN_GROUP_CHANNELS = 4


def norm_groups(channels: int) -> int:
    """Groups of a GroupNorm over ``channels``: the most (at most 32, as in the paper) that divide
    ``channels`` and leave ``MIN_GROUP_CHANNELS`` or more channels in each (32 at 128 channels,
    4 at 16, 12 at 48); one group when there are fewer channels than that."""
    return max(g for g in range(1, 33) if channels % g == 0 and (g == 1 or channels // g >= MIN_GROUP_CHANNELS))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, scale_shift_norm: bool = True) -> None:
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if scale_shift_norm else c_out)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): [B, C, H, W] -> [B, out_channels, H, W].

    ``num_classes > 0`` adds a learned class embedding to the time embedding; label
    ``num_classes`` is the "no class" token that classifier-free guidance trains and samples with.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int = 0,
        out_channels: Optional[int] = None,
        scale_shift_norm: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        attn_at = {int(r) for r in attention_resolutions}

        def res_block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout, scale_shift_norm)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [channels]
        c, res = channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([res_block(c, channels * mult)])
                c = channels * mult
                if res in attn_at:
                    block.append(Attention(c))
                self.down.append(block)
                skip_channels.append(c)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skip_channels.append(c)
                res = (res + 1) // 2

        self.mid = nn.ModuleList([res_block(c, c), Attention(c), res_block(c, c)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([res_block(c + skip_channels.pop(), channels * mult)])
                c = channels * mult
                if res in attn_at:
                    block.append(Attention(c))
                self.up.append(block)
            if level != 0:
                self.up.append(nn.ModuleList([nn.Conv2d(c, c, 3, padding=1)]))  # after nearest upsampling
                res = res * 2
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels or in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.class_emb is not None:
            if y is None:
                raise ValueError("this UNet is class-conditional: pass labels y (num_classes = no class)")
            emb = emb + self.class_emb(y)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = self._run_block(block, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
            else:  # upsample to the size of the skip it meets next
                h = block[0](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.out(h)

    @staticmethod
    def _run_block(block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h
