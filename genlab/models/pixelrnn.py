"""PixelRNN (van den Oord et al., 2016): ``model=pixelrnn``, ``model.variant=row_lstm|diagonal_bilstm``.

A k x k mask-A input convolution, a stack of recurrent layers (Row LSTM or Diagonal BiLSTM, see
``genlab.nets.pixelrnn``) with residual connections, and the masked 1x1 head of PixelCNN: a
256-way softmax per sub-pixel, R -> G -> B within a pixel. The likelihood is exact, and the
model is one more member of the autoregressive family: the autoregressive sampler draws from it
(recomputing the whole image per sub-pixel, as a recurrence has no bounded window).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.autoregressive import AutoregressiveModel, _check_kernels
from genlab.nets.autoregressive import MaskedConv2d, OutputHead
from genlab.nets.pixelrnn import DiagonalBiLSTMLayer, RowLSTMLayer

VARIANTS = {"row_lstm": RowLSTMLayer, "diagonal_bilstm": DiagonalBiLSTMLayer}


class PixelRNN(AutoregressiveModel):
    """Images only ([C, H, W], 256 values); the sampler's window is the rows up to the pixel's."""

    data_dims = 3
    fixed_vocab_size = 256

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        variant: str = "diagonal_bilstm",
        channels: int = 32,
        hidden: int = 32,
        layers: int = 2,
        first_kernel_size: int = 7,
        head_channels: int = 128,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, vocab_size)
        if variant not in VARIANTS:
            raise ConfigError(f"model.variant={variant!r} is not known; use one of {sorted(VARIANTS)}")
        require_positive("model", channels=channels, hidden=hidden, layers=layers, head_channels=head_channels)
        c = self.data_shape[0]
        for name, width in (("channels", channels), ("hidden", hidden)):
            if width < c:
                raise ConfigError(f"model.{name}={width} is too small for {c} colour channels; use >= {c}")
        _check_kernels(3, first_kernel_size)
        self.variant = variant
        self.input_conv = MaskedConv2d(c, channels, first_kernel_size, "A", c)
        self.class_bias = nn.Embedding(num_classes, channels) if self.conditional else None
        layer = VARIANTS[variant]
        # the first Diagonal BiLSTM layer's right-to-left gates also see the image itself (all of
        # the current pixel: that direction's output is shifted down a row), so that the receptive
        # field is the whole causal context (genlab.nets.pixelrnn)
        first = layer(channels, hidden, c, pixel_channels=c) if layer is DiagonalBiLSTMLayer else layer(channels, hidden, c)
        self.layers = nn.Sequential(first, *[layer(channels, hidden, c) for _ in range(layers - 1)])
        self.head = OutputHead(channels, head_channels, c)

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        pixels = h
        h = self.input_conv(h)
        labels = self.class_labels(y)
        if labels is not None:
            h = h + self.class_bias(labels)[:, :, None, None]
        first, rest = self.layers[0], self.layers[1:]
        h = first(h, pixels) if isinstance(first, DiagonalBiLSTMLayer) else first(h)
        return self.head(rest(h))
