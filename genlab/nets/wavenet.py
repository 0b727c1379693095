"""WaveNet blocks (van den Oord et al., 2016): dilated 1-D convolutions with gated activations,
residual and skip connections, conditioning added inside every gate.

One stack serves two families: ``model=wavenet`` (causal, conditioned on a label: one vector per
clip) and the coupling networks of ``model=waveglow`` (non-causal, conditioned on an upsampled
mel-spectrogram: one vector per time step). Tensors are [B, C, T].

Causal stacks also run one time step at a time with a queue of past inputs per layer (the "fast
WaveNet" idea, Paine et al., 2016): a step costs one small convolution per layer, not a pass over
the receptive field.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def dilations(layers_per_stack: int, stacks: int) -> list[int]:
    """1, 2, 4, ..., 2**(layers_per_stack - 1), repeated ``stacks`` times (WaveNet's schedule)."""
    return [2**i for i in range(layers_per_stack)] * stacks


class StepCache:
    """The past a causal stack needs to run one step at a time: for each layer a ring buffer of
    its last (kernel_size - 1) * dilation inputs, zeros before the first step (the causal padding)."""

    def __init__(self, queues: list[Tensor]) -> None:
        self.queues = queues
        self.t = 0  # steps taken
        self.cond: Optional[list[Tensor]] = None  # per-layer conditioning, computed once


class GatedResidualLayer(nn.Module):
    """``z = tanh(W_f * h + V_f c) * sigmoid(W_g * h + V_g c)``; returns ``h + 1x1(z)`` and the skip
    ``1x1(z)``. Causal: output t sees inputs t - (k-1) d .. t; otherwise centred (odd k)."""

    def __init__(self, channels: int, skip_channels: int, kernel_size: int, dilation: int,
                 cond_channels: int = 0, causal: bool = True) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a non-causal layer needs an odd kernel_size, got {kernel_size}")
        self.kernel_size, self.dilation = kernel_size, dilation
        reach = (kernel_size - 1) * dilation
        self.padding = (reach, 0) if causal else (reach // 2, reach // 2)
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation)
        self.cond = nn.Conv1d(cond_channels, 2 * channels, 1, bias=False) if cond_channels else None
        self.out = nn.Conv1d(channels, channels + skip_channels, 1)  # residual and skip in one 1x1

    def _out(self, pre: Tensor, h: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if cond is not None:
            pre = pre + cond
        a, b = pre.chunk(2, dim=1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).split([h.shape[1], self.out.out_channels - h.shape[1]], 1)
        return h + res, skip

    def forward(self, h: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """h [B, C, T]; cond [B, Cc, T] or [B, Cc, 1] (one vector per clip)."""
        c = self.cond(cond) if self.cond is not None and cond is not None else None
        return self._out(self.conv(F.pad(h, self.padding)), h, c)

    def step(self, h: Tensor, queue: Tensor, t: int, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Time step t of a causal layer: h [B, C, 1] its input at t, ``queue`` [B, C, (k-1) d]
        its inputs at t - (k-1) d .. t - 1 (slot s mod length). Updates the queue in place."""
        length = queue.shape[2]
        slots = [(t - (self.kernel_size - 1 - j) * self.dilation) % length for j in range(self.kernel_size - 1)]
        taps = torch.cat([queue[:, :, s:s + 1] for s in slots] + [h], dim=2)  # [B, C, k], oldest first
        if length:
            queue[:, :, t % length] = h[:, :, 0]
        return self._out(F.conv1d(taps, self.conv.weight, self.conv.bias), h, cond)


class WaveNetStack(nn.Module):
    """1x1 input projection, gated residual layers, the sum of their skips through
    ReLU-1x1-ReLU-1x1 to ``out_channels``. ``zero_out`` starts the last layer at zero (a new
    coupling layer is then the identity)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, skip_channels: int,
                 dilation_schedule: Sequence[int], kernel_size: int = 2, cond_channels: int = 0,
                 causal: bool = True, zero_out: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.input = nn.Conv1d(in_channels, channels, 1)
        self.layers = nn.ModuleList(
            GatedResidualLayer(channels, skip_channels, kernel_size, d, cond_channels, causal)
            for d in dilation_schedule
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(),
                                  nn.Conv1d(skip_channels, out_channels, 1))
        if zero_out:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    @property
    def receptive_field(self) -> int:
        return 1 + sum((layer.kernel_size - 1) * layer.dilation for layer in self.layers)

    def forward(self, h: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        h, skip = self.input(h), 0
        for layer in self.layers:
            h, s = layer(h, cond)
            skip = skip + s
        return self.head(skip)

    # ----- one step at a time (causal stacks) ---------------------------------------------
    def new_cache(self, batch: int) -> StepCache:
        """An empty past for ``batch`` sequences."""
        if not self.causal:
            raise ValueError("only a causal stack runs one step at a time")
        weight = self.input.weight
        return StepCache([weight.new_zeros(batch, weight.shape[0], (layer.kernel_size - 1) * layer.dilation)
                          for layer in self.layers])

    def step(self, x: Tensor, cache: StepCache, cond: Optional[Tensor] = None) -> Tensor:
        """The output [B, out] at time ``cache.t`` given the input there, x [B, in]; ``cond``
        [B, Cc, 1] (one vector per sequence) is projected once per layer, at the first step."""
        if cache.t == 0 and cond is not None:
            cache.cond = [layer.cond(cond) if layer.cond is not None else None for layer in self.layers]
        h, skip = self.input(x[:, :, None]), 0
        for index, layer in enumerate(self.layers):
            h, s = layer.step(h, cache.queues[index], cache.t, cache.cond[index] if cache.cond else None)
            skip = skip + s
        cache.t += 1
        return self.head(skip)[:, :, 0]
