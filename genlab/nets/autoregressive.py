"""Building blocks of the autoregressive family: masked convolutions (PixelCNN), gated
vertical/horizontal stacks (Gated PixelCNN) and a causal Transformer with a key/value cache.

Order of the sub-pixels: raster order over pixels, and R -> G -> B within a pixel. Feature maps
of the convolutional nets carry a *group* per channel (0..C-1): a feature of group g at pixel p
may depend on the image channels < g of p (mask A) or <= g of p (mask B), and on every channel
of the pixels before p.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def channel_groups(n: int, groups: int) -> Tensor:
    """Contiguous assignment of ``n`` channels to ``groups`` colour groups (0..groups-1)."""
    return torch.arange(n) * groups // n


def centre_mask(out_groups: Tensor, in_groups: Tensor, mask_type: str) -> Tensor:
    """[out, in] mask of the centre tap: A allows earlier colour groups only, B also the same."""
    if mask_type == "A":
        return (in_groups[None, :] < out_groups[:, None]).float()
    return (in_groups[None, :] <= out_groups[:, None]).float()


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel only sees what comes before each output sub-pixel.

    ``shape`` "full" is PixelCNN's k x k mask (rows above; left of centre in the centre row;
    the centre by colour group), "row" is a 1 x (k//2 + 1) kernel ending at the centre (the
    horizontal stack of Gated PixelCNN). Inputs and outputs keep the image size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        colours: int,
        shape: str = "full",
        out_groups: Optional[Tensor] = None,
        in_groups: Optional[Tensor] = None,
    ) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        k = kernel_size
        kh, kw = (k, k) if shape == "full" else (1, k // 2 + 1)
        padding = (k // 2, k // 2) if shape == "full" else (0, 0)
        super().__init__(in_channels, out_channels, (kh, kw), padding=padding)
        self.left_pad = 0 if shape == "full" else k // 2
        out_groups = channel_groups(out_channels, colours) if out_groups is None else out_groups
        in_groups = channel_groups(in_channels, colours) if in_groups is None else in_groups
        mask = torch.zeros(out_channels, in_channels, kh, kw)
        centre_row, centre_col = (k // 2, k // 2) if shape == "full" else (0, k // 2)
        mask[:, :, :centre_row] = 1.0
        mask[:, :, centre_row, :centre_col] = 1.0
        mask[:, :, centre_row, centre_col] = centre_mask(out_groups, in_groups, mask_type)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.left_pad:
            x = F.pad(x, (self.left_pad, 0, 0, 0))
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class ResidualBlock(nn.Module):
    """PixelCNN residual block: 1x1 (h -> h/2), k x k masked B, 1x1 back to h; ReLU before each."""

    def __init__(self, channels: int, kernel_size: int, colours: int) -> None:
        super().__init__()
        half = channels // 2
        groups, half_groups = channel_groups(channels, colours), channel_groups(half, colours)
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(channels, half, 1, "B", colours, out_groups=half_groups, in_groups=groups),
            nn.ReLU(),
            MaskedConv2d(half, half, kernel_size, "B", colours, out_groups=half_groups, in_groups=half_groups),
            nn.ReLU(),
            MaskedConv2d(half, channels, 1, "B", colours, out_groups=groups, in_groups=half_groups),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def shift_down(x: Tensor) -> Tensor:
    """Move a feature map one row down (zeros in the top row): row i then sees rows < i only."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One layer of Gated PixelCNN (van den Oord et al., 2016): a vertical stack that sees the
    rows above (full width, so no blind spot) and a horizontal stack that sees the pixels to the
    left in the current row, joined by a 1x1 link from the (shifted) vertical to the horizontal
    stack; tanh(a) * sigmoid(b) gates in both, an optional class bias, a residual on the
    horizontal stack. ``first`` uses mask A at the centre (and the image as input)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, colours: int,
                 num_classes: int = 0, first: bool = False) -> None:
        super().__init__()
        k = kernel_size
        self.first = first
        in_groups = channel_groups(in_channels, colours)
        groups = channel_groups(channels, colours)
        gate_groups = torch.cat([groups, groups])  # a and b of one gated unit share a group
        # vertical stack: kernel (k//2 + 1) x k, output row i sees rows i - k//2 .. i
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (k // 2 + 1, k), padding=(0, k // 2))
        self.v_pad = k // 2
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)  # fed the shifted stack: no mask
        self.h_conv = MaskedConv2d(in_channels, 2 * channels, k, "A" if first else "B", colours,
                                   shape="row", out_groups=gate_groups, in_groups=in_groups)
        self.h_out = None if first else MaskedConv2d(channels, channels, 1, "B", colours,
                                                     out_groups=groups, in_groups=groups)
        self.class_bias = nn.Embedding(num_classes, 4 * channels) if num_classes > 0 else None

    @staticmethod
    def _gate(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        v_pre = self.v_conv(F.pad(v, (0, 0, self.v_pad, 0)))
        h_pre = self.h_conv(h) + self.v_to_h(shift_down(v_pre))
        if self.class_bias is not None and y is not None:
            bias_v, bias_h = self.class_bias(y)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        v_out, h_gated = self._gate(v_pre), self._gate(h_pre)
        if self.first:
            return v_out, h_gated
        return v_out, h + self.h_out(h_gated)


class OutputHead(nn.Module):
    """ReLU, masked 1x1, ReLU, masked 1x1 to C*256 logits (group c -> logits of channel c)."""

    def __init__(self, channels: int, hidden: int, colours: int) -> None:
        super().__init__()
        out = colours * 256
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(channels, hidden, 1, "B", colours),
            nn.ReLU(),
            MaskedConv2d(hidden, out, 1, "B", colours, out_groups=torch.arange(out) // 256),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


# ----- causal Transformer -----------------------------------------------------------------
class KVCache:
    """Keys and values of the positions decoded so far, one pair per layer, preallocated."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, heads, length, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = 0  # positions filled


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} must be a multiple of the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # t new positions after cache.length cached ones
            start = cache.length
            cache.keys[layer][:, :, start:start + t] = k
            cache.values[layer][:, :, start:start + t] = v
            keys, values = cache.keys[layer][:, :, :start + t], cache.values[layer][:, :, :start + t]
            mask = None
            if t > 1:
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm GPT block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2 style initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

