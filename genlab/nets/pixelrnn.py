"""Recurrent layers of PixelRNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks").

Feature maps keep the colour groups of ``genlab.nets.autoregressive``: the only path from the
current pixel into a feature is the masked input-to-state convolution (mask B, so group g sees
image channels <= g); the state-to-state path carries the states of earlier pixels only.

- ``RowLSTMLayer``: the image is processed a row at a time; the state of row i comes from the
  states of row i-1 (a 1 x 3 convolution) and the input of row i (a masked 1 x 3 convolution).
  Its receptive field is a triangle above the pixel: pixels far to the upper right are never
  seen (the blind region), however many rows are processed.
- ``DiagonalBiLSTMLayer``: the map is skewed (row i shifted right by i) so that each column of
  the skewed map is a diagonal; a 2 x 1 state-to-state convolution over the previous column
  reaches the pixel to the left and the one above. The right-to-left direction runs on the
  mirrored map and its output is shifted down one row, so it carries rows above only. Because of
  that shift its input at (r, c) may hold all of pixel (r, c), every channel (every pixel of row
  r precedes every pixel of row r+1): the first layer (``pixel_channels``) adds a 1 x 1
  convolution of the image itself to the right-to-left gates. Without it no feature of row i-1
  would hold the last sub-pixel of that row (a masked feature at (r, c) holds only what precedes
  (r, c)), and pixels left of where the mask-A input convolution reaches would never see it. With
  it the receptive field is the whole causal context, at any depth and input kernel size, as the
  paper states (sec. 3.2), and causality stays exact (``tests/test_pixelrnn.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genlab.nets.autoregressive import MaskedConv2d, channel_groups, shift_down


def _lstm_update(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step: gates [B, 4h, ...] in the order (input, forget, output, candidate)."""
    i, f, o, g = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def _gate_conv(channels: int, hidden: int, kernel_size: int, colours: int, shape: str,
               lstms: int = 1) -> MaskedConv2d:
    """The masked input-to-state convolution of ``lstms`` LSTMs: 4 gate chunks of ``hidden``
    units each per LSTM, every chunk with the hidden units' colour groups."""
    groups = channel_groups(hidden, colours)
    return MaskedConv2d(channels, 4 * hidden * lstms, kernel_size, "B", colours, shape=shape,
                        out_groups=groups.repeat(4 * lstms), in_groups=channel_groups(channels, colours))


def _residual_out(hidden: int, channels: int, colours: int) -> MaskedConv2d:
    return MaskedConv2d(hidden, channels, 1, "B", colours, out_groups=channel_groups(channels, colours),
                        in_groups=channel_groups(hidden, colours))


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer with a residual connection: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, hidden: int, colours: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = _gate_conv(channels, hidden, 3, colours, "row")  # columns j-1, j
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)      # row i-1, columns j-1..j+1
        self.out = _residual_out(hidden, channels, colours)

    def forward(self, x: Tensor) -> Tensor:
        b, _, rows, width = x.shape
        gates_in = self.input_to_state(x)  # [B, 4h, H, W]
        h = cell = x.new_zeros(b, self.hidden, width)
        outputs = []
        for i in range(rows):
            h, cell = _lstm_update(gates_in[:, :, i] + self.state_to_state(h), cell)
            outputs.append(h)
        return x + self.out(torch.stack(outputs, dim=2))


def skew(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W + H - 1]: row i shifted right by i (zeros elsewhere)."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h, w + h - 1)
    for i in range(h):
        out[:, :, i, i:i + w] = x[:, :, i]
    return out


def unskew(x: Tensor, width: int) -> Tensor:
    """The inverse of ``skew``."""
    return torch.stack([x[:, :, i, i:i + width] for i in range(x.shape[2])], dim=2)


class DiagonalLSTM(nn.Module):
    """A left-to-right diagonal LSTM over a map of input-to-state gates [B, 4h, H, W]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        # over the previous skewed column: rows i-1 (the pixel above) and i (the pixel left)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)

    def forward(self, gates_in: Tensor) -> Tensor:
        width = gates_in.shape[3]
        skewed = skew(gates_in)
        b, _, rows, cols = skewed.shape
        h = cell = gates_in.new_zeros(b, self.hidden, rows)
        outputs = []
        for j in range(cols):
            gates = skewed[:, :, :, j] + self.state_to_state(F.pad(h, (1, 0)))
            h, cell = _lstm_update(gates, cell)
            outputs.append(h)
        return unskew(torch.stack(outputs, dim=3), width)


class DiagonalBiLSTMLayer(nn.Module):
    """One Diagonal BiLSTM layer with a residual connection: [B, C, H, W] -> [B, C, H, W].

    ``pixel_channels`` > 0 (the first layer): ``forward`` also takes the image [B, pixel_channels,
    H, W], all of which the right-to-left gates see at the pixel itself (its output is shifted
    down a row, so only later rows receive it)."""

    def __init__(self, channels: int, hidden: int, colours: int, pixel_channels: int = 0) -> None:
        super().__init__()
        self.input_to_state = _gate_conv(channels, hidden, 1, colours, "full", lstms=2)
        self.pixels_to_backward = nn.Conv2d(pixel_channels, 4 * hidden, 1, bias=False) if pixel_channels else None
        self.forward_lstm = DiagonalLSTM(hidden)
        self.backward_lstm = DiagonalLSTM(hidden)
        self.out = _residual_out(hidden, channels, colours)

    def forward(self, x: Tensor, pixels: Optional[Tensor] = None) -> Tensor:
        gates_fwd, gates_bwd = self.input_to_state(x).chunk(2, dim=1)  # 1x1: the skew comes after
        if self.pixels_to_backward is not None:
            if pixels is None:
                raise ValueError("this DiagonalBiLSTMLayer was built with pixel_channels: pass the image as pixels")
            gates_bwd = gates_bwd + self.pixels_to_backward(pixels)  # unmasked: used one row down only
        left_to_right = self.forward_lstm(gates_fwd)
        right_to_left = self.backward_lstm(gates_bwd.flip(3)).flip(3)
        return x + self.out(left_to_right + shift_down(right_to_left))
