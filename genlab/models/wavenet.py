"""WaveNet (van den Oord et al., 2016): ``model=wavenet``, an autoregressive model of mu-law audio.

p(x) = prod_t p(x_t | x_<t) over the samples of a mono clip [1, T], each conditional a
``vocab_size``-way softmax over the quantized (mu-law) values, computed by a stack of causal
dilated convolutions with gated units, residual and skip connections; optionally conditioned on
the clip's label (digit or speaker: ``dataset.num_classes``) through a bias in every gate
(WaveNet's global conditioning). The likelihood is exact: ``nll_bits`` is -log2 p(x), in one pass.

It is an ``autoregressive``-family model and ``genlab.samplers.autoregressive`` samples it through
the same primitives as the Transformer: ``logits(x, y)`` for every position at once (the uncached
path) and ``new_cache`` / ``next_logits`` for one sample at a time, where every layer keeps a queue
of its past inputs (``genlab.nets.wavenet``): one step per layer per sample.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.autoregressive import AutoregressiveModel
from genlab.nets.wavenet import StepCache, WaveNetStack, dilations


class WaveNet(AutoregressiveModel):
    """Inputs are the embeddings of the previous samples (the sequence shifted right by one, zeros
    before the first); a causal stack of ``stacks`` x ``layers_per_stack`` layers with dilations
    1, 2, ..., 2**(layers_per_stack - 1); ``vocab_size`` logits per sample."""

    data_dims = 2

    def __init__(
        self,
        data_shape: Sequence[int],
        vocab_size: int = 256,
        num_classes: int = 0,
        conditional: bool = False,
        channels: int = 32,
        skip_channels: int = 64,
        layers_per_stack: int = 8,
        stacks: int = 2,
        kernel_size: int = 2,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, vocab_size)
        if self.data_shape[0] != 1:
            raise ConfigError(f"model=wavenet models mono audio of data_shape [1, T]; the dataset gives "
                              f"{list(self.data_shape)}. Pick an audio dataset (dataset=fsdd).")
        require_positive("model", vocab_size=vocab_size, channels=channels, skip_channels=skip_channels,
                         layers_per_stack=layers_per_stack, stacks=stacks)
        if kernel_size < 2:
            raise ConfigError(f"model.kernel_size={kernel_size} must be at least 2 (a causal kernel sees the past)")
        self.value_embedding = nn.Embedding(self.vocab_size, channels)
        self.label_embedding = nn.Embedding(num_classes, channels) if self.conditional else None
        self.stack = WaveNetStack(channels, self.vocab_size, channels, skip_channels,
                                  dilations(layers_per_stack, stacks), kernel_size,
                                  cond_channels=channels if self.conditional else 0)

    @property
    def receptive_field(self) -> int:
        """How many past samples one prediction sees: x_t's logits depend on x_{t-rf} .. x_{t-1}."""
        return self.stack.receptive_field

    def _cond(self, y: Optional[Tensor]) -> Optional[Tensor]:
        labels = self.class_labels(y)
        return None if labels is None else self.label_embedding(labels)[:, :, None]

    # ----- the primitives ---------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """uint8 [B, 1, T] -> value embeddings [B, channels, T] (not yet shifted)."""
        return self.value_embedding(x[:, 0].long()).transpose(1, 2)

    def logits_from_embedded(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Logits [B, vocab_size, T]: position t sees the embeddings of positions < t only."""
        return self.stack(F.pad(h, (1, -1)), self._cond(y))

    def window(self, position: Sequence[int]) -> list[tuple[int, int]]:
        """The receptive field before sample t and t itself: all the exact logits of t need."""
        (t,) = position
        return [(max(0, t - self.receptive_field), t + 1)]

    def new_cache(self, batch: int) -> StepCache:
        return self.stack.new_cache(batch)

    def next_logits(self, cache: StepCache, previous: Optional[Tensor], y: Optional[Tensor] = None) -> Tensor:
        """Logits [B, vocab_size] of the next sample given the value just drawn (None at the start)."""
        if cache.t >= self.data_shape[1]:
            raise ValueError(f"the cache already holds all {self.data_shape[1]} samples")
        if previous is None:
            h = self.value_embedding.weight.new_zeros(cache.queues[0].shape[0], self.value_embedding.embedding_dim)
        else:
            h = self.value_embedding(previous.long())
        return self.stack.step(h, cache, self._cond(y) if cache.t == 0 else None)
