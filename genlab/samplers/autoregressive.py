"""Value-by-value sampling from an autoregressive model, in the model's order: row-major over
the positions of ``data_shape[1:]`` (raster order for images, time for sequences), the channels
of a position innermost (R -> G -> B within a pixel).

Each value is drawn from its ``vocab_size``-way softmax at a temperature. With ``cache: true``
(the default) nothing is recomputed that need not be: a model with ``new_cache``/``next_logits``
(the Transformer) decodes one position at a time, and the others are fed only ``model.window``,
the part of the data that can influence the current position. ``cache: false`` recomputes
everything for every value (the reference the cached paths must match exactly).
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler


class AutoregressiveSampler(Sampler):
    families = ("autoregressive",)

    def __init__(self, temperature: float = 1.0, cache: bool = True,
                 classes: Optional[Sequence[int]] = None) -> None:
        if temperature < 0:
            raise ConfigError(f"sampler.temperature must be >= 0, got {temperature}")
        self.temperature = float(temperature)
        self.cache = bool(cache)
        self.classes = list(classes) if classes is not None else None

    def draw(self, logits: Tensor) -> Tensor:
        """One value per row of ``logits`` [n, V] by inversion of the CDF (one uniform per row,
        so two paths whose logits agree to rounding draw the same values); temperature 0 is argmax."""
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        u = torch.rand(probs.shape[0], 1, device=probs.device)
        cdf = probs.cumsum(-1)
        return (cdf < u * cdf[:, -1:]).sum(-1).clamp(max=logits.shape[-1] - 1)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        c, *sizes = model.data_shape
        x = torch.zeros(n, *model.data_shape, dtype=model.value_dtype, device=model.device)
        everything = [(0, size) for size in sizes]
        every = slice(None)
        if self.cache and hasattr(model, "new_cache"):
            cache, previous = model.new_cache(n), None
            for position in itertools.product(*map(range, sizes)):
                for ch in range(c):
                    previous = self.draw(model.next_logits(cache, previous, labels))
                    x[(every, ch, *position)] = previous.to(x.dtype)
            return x
        for position in itertools.product(*map(range, sizes)):
            window = model.window(position) if self.cache else everything
            crop = x[(every, every, *(slice(start, stop) for start, stop in window))]
            inside = tuple(p - start for p, (start, _) in zip(position, window))
            for ch in range(c):
                logits = model.logits(crop, labels).view(n, c, model.vocab_size, *crop.shape[2:])
                x[(every, ch, *position)] = self.draw(logits[(every, ch, every, *inside)]).to(x.dtype)
        return x
