"""Autoregressive models: ``model=pixelcnn``, ``model=gated_pixelcnn`` and ``model=ar_transformer``.

All three factorize p(x) = prod_i p(x_i | x_<i) over the sub-pixels in raster order, R -> G -> B
within a pixel, each conditional a 256-way softmax (``vocab_size``-way for the Transformer). The likelihood is exact: ``nll_bits`` is
-log2 p(x) of the discrete 8-bit image, computed in one forward pass, and training minimises it.

Primitives for ``genlab.samplers.autoregressive``: ``logits(x, y)`` gives every conditional's
logits at once ([B, C*V, H, W], the layout of ``Categorical``); the convolutional models say
how far a pixel's logits reach (``rows_needed`` up, ``cols_needed`` either side), so a sampler
may feed only that window;
the Transformer decodes one sub-pixel at a time with a key/value cache (``new_cache``,
``next_logits``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import LOG2, GenerativeModel
from genlab.nets.autoregressive import (
    GatedLayer,
    KVCache,
    MaskedConv2d,
    OutputHead,
    ResidualBlock,
    TransformerBlock,
    init_gpt_weights,
)
from genlab.nets.likelihoods import Categorical, to_unit_range

log = logging.getLogger(__name__)


def _check_kernels(kernel_size: int, first_kernel_size: int) -> None:
    require_positive("model", kernel_size=kernel_size, first_kernel_size=first_kernel_size)
    for name, k in (("kernel_size", kernel_size), ("first_kernel_size", first_kernel_size)):
        if k % 2 == 0:
            raise ConfigError(f"model.{name} must be an odd positive integer, got {k}")


class AutoregressiveModel(GenerativeModel):
    """What the autoregressive models share: the exact likelihood, the training step,
    conditioning, and the primitives the autoregressive sampler calls.

    The order is row-major over the positions of ``data_shape[1:]`` (raster order for images,
    time for sequences), the channels of a position innermost. ``logits(x)`` gives logits
    [B, C*V, *positions] (V = vocab_size); ``window(position)`` the part of ``x`` whose logits
    at ``position`` are exact; a model may also offer ``new_cache``/``next_logits`` (one step).
    """

    family = "autoregressive"
    likelihood = "exact"
    step_metrics = ("loss",)
    data_dims = None
    fixed_vocab_size = None

    def window(self, position: Sequence[int]) -> list[tuple[int, int]]:
        """(start, stop) per position axis of the smallest part of ``x`` from which ``logits``
        gives the exact logits of ``position``. Here: everything up to its row (or time step)."""
        return [(0, position[0] + 1), *((0, size) for size in self.data_shape[2:])]

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(tuple(data_shape), num_classes, optimizer, scheduler, conditional, vocab_size)

    # ----- the primitives ---------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """The uint8 image as the network's continuous input (what causality is checked on):
        [-1, 1] values for the convolutional nets."""
        return to_unit_range(x).to(next(self.parameters()).dtype)

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Logits [B, C*V, *positions] of every value given the embedded data ``h``."""
        raise NotImplementedError

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.logits_from_embedded(self.embed(x), y)

    # ----- likelihood -------------------------------------------------------------------
    def log_probs(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """log p(x_i | x_<i) in nats for every value, shape [B, *data_shape]."""
        return Categorical(self.logits(x, y), self.data_shape[0], self.vocab_size).log_prob(x)

    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Exact -log2 p(x): the sum of the per-sub-pixel conditionals, one pass."""
        return -self.log_probs(x, y).flatten(1).sum(1) / LOG2

    # ----- training ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        log.info("%s: the likelihood is exact (-log2 p(x) summed over %d conditionals); "
                 "loss and bits/dim are exact, not bounds", type(self).__name__, self.num_dims)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        loss = self.nll_bits(x, y).mean() / self.num_dims  # exact bits/dim of the batch
        if stage == "train":
            self.check_finite(loss=loss)
        self.log_stage(stage, {"loss": loss}, x.shape[0])
        return loss



class ConvImageModel(AutoregressiveModel):
    """A masked-convolution model of images: 8-bit [C, H, W], sampled through a raster window."""

    data_dims = 3
    fixed_vocab_size = 256
    #: rows above, and columns either side, of a pixel that can influence its logits through
    #: the zero-padded convolutions
    rows_needed: int
    cols_needed: int

    def window(self, position: Sequence[int]) -> list[tuple[int, int]]:
        i, j = position
        w = self.data_shape[2]
        return [(max(0, i - self.rows_needed), i + 1), (max(0, j - self.cols_needed), min(w, j + self.cols_needed + 1))]


class PixelCNN(ConvImageModel):
    """PixelCNN (van den Oord et al., 2016): a k x k mask-A convolution, residual blocks of
    mask-B convolutions, a masked 1x1 head. Has the blind spot (up-right of each pixel)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        channels: int = 64,
        blocks: int = 5,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        head_channels: int = 256,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, vocab_size)
        c = self.data_shape[0]
        require_positive("model", channels=channels, blocks=blocks, head_channels=head_channels)
        if channels < 2 * c:
            raise ConfigError(f"model.channels={channels} is too small for {c} colour channels; use >= {2 * c}")
        _check_kernels(kernel_size, first_kernel_size)
        self.input_conv = MaskedConv2d(c, channels, first_kernel_size, "A", c)
        self.class_bias = nn.Embedding(num_classes, channels) if self.conditional else None
        self.blocks = nn.Sequential(*[ResidualBlock(channels, kernel_size, c) for _ in range(blocks)])
        self.head = OutputHead(channels, head_channels, c)
        self.rows_needed = self.cols_needed = first_kernel_size // 2 + blocks * (kernel_size // 2)

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.input_conv(h)
        labels = self.class_labels(y)
        if labels is not None:
            h = h + self.class_bias(labels)[:, :, None, None]
        return self.head(self.blocks(h))


class GatedPixelCNN(ConvImageModel):
    """Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
    Decoders"): vertical and horizontal stacks with gated units, no blind spot, optionally
    conditioned on the class through a bias in every gate."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        channels: int = 64,
        layers: int = 8,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        head_channels: int = 256,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, vocab_size)
        c = self.data_shape[0]
        require_positive("model", channels=channels, layers=layers, head_channels=head_channels)
        if channels < c:
            raise ConfigError(f"model.channels={channels} is too small for {c} colour channels; use >= {c}")
        _check_kernels(kernel_size, first_kernel_size)
        n_cls = num_classes if self.conditional else 0
        self.layers = nn.ModuleList(
            [GatedLayer(c, channels, first_kernel_size, c, n_cls, first=True)]
            + [GatedLayer(channels, channels, kernel_size, c, n_cls) for _ in range(layers - 1)]
        )
        self.head = OutputHead(channels, head_channels, c)
        # both stacks reach k//2 pixels per layer; the shift into h adds one row
        self.cols_needed = first_kernel_size // 2 + (layers - 1) * (kernel_size // 2)
        self.rows_needed = self.cols_needed + 1

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        labels = self.class_labels(y)
        v = h
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)


class ARTransformer(AutoregressiveModel):
    """A small causal Transformer over the raster sequence of sub-pixels (ImageGPT-like, on the
    256 raw values). The first input is a start token (one per class when conditional); the
    input at position i is the value of sub-pixel i-1, with a learned position embedding."""

    MAX_LENGTH = 4096
    data_dims = 3

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, vocab_size)
        require_positive("model", dim=dim, depth=depth, heads=heads)
        if dim % heads:
            raise ConfigError(f"model.dim={dim} must be a multiple of model.heads={heads}")
        self.length = self.num_dims
        if self.length > self.MAX_LENGTH:
            c, h, w = self.data_shape
            raise ConfigError(
                f"model=ar_transformer is for small images: {c}x{h}x{w} is {self.length} sub-pixels, "
                f"more than {self.MAX_LENGTH}. Lower dataset.image_size or use model=gated_pixelcnn."
            )
        self.dim, self.heads = dim, heads
        self.value_embedding = nn.Embedding(self.vocab_size, dim)
        self.start = nn.Embedding(num_classes if self.conditional else 1, dim)
        self.position = nn.Parameter(torch.zeros(self.length, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.vocab_size)
        self.apply(init_gpt_weights)
        nn.init.normal_(self.position, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        """[B, C, H, W] uint8 -> value embeddings [B, C, H, W, D] (not yet shifted)."""
        return self.value_embedding(x.long())

    def _start(self, batch: int, y: Optional[Tensor]) -> Tensor:
        labels = self.class_labels(y)
        if labels is None:
            labels = torch.zeros(batch, dtype=torch.long, device=self.position.device)
        return self.start(labels)

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        b, c, rows, w, d = h.shape
        seq = h.permute(0, 2, 3, 1, 4).reshape(b, rows * w * c, d)  # raster, then R G B
        seq = torch.cat([self._start(b, y)[:, None], seq[:, :-1]], dim=1) + self.position[: seq.shape[1]]
        for block in self.blocks:
            seq = block(seq)
        out = self.head(self.norm(seq))  # [B, L, V]
        v = self.vocab_size
        return out.view(b, rows, w, c, v).permute(0, 3, 4, 1, 2).reshape(b, c * v, rows, w)

    def new_cache(self, batch: int) -> KVCache:
        p = self.position
        return KVCache(len(self.blocks), batch, self.heads, self.length, self.dim // self.heads, p.device, p.dtype)

    def next_logits(self, cache: KVCache, previous: Optional[Tensor], y: Optional[Tensor] = None) -> Tensor:
        """Logits [B, V] of the next sub-pixel, given the value just drawn (None at the start);
        the cache holds the keys and values of every earlier position."""
        pos = cache.length
        if pos >= self.length:
            raise ValueError(f"the cache already holds all {self.length} positions")
        if previous is None:
            token = self._start(cache.keys[0].shape[0], y)
        else:
            token = self.value_embedding(previous.long())
        seq = (token + self.position[pos])[:, None]
        for i, block in enumerate(self.blocks):
            seq = block(seq, cache, i)
        cache.length += 1
        return self.head(self.norm(seq))[:, 0]
