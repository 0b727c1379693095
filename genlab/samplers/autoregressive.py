"""Pixel-by-pixel sampling from an autoregressive model, R -> G -> B within a pixel.

Each sub-pixel is drawn from its 256-way softmax at a temperature. With ``cache: true`` (the
default) nothing is recomputed that need not be: the Transformer decodes one position at a time
with a key/value cache, and the convolutional models are fed only the window that can influence
the current pixel (``model.rows_needed`` rows above, ``model.cols_needed`` columns either side).
``cache: false`` recomputes the whole image for every sub-pixel (the reference the cached paths
must match exactly).
"""

from __future__ import annotations

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
        """One value per row of ``logits`` [n, 256] by inversion of the CDF (one uniform per row,
        so two paths whose logits agree to rounding draw the same values); temperature 0 is argmax."""
        if self.temperature == 0:
            return logits.argmax(-1).to(torch.uint8)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        u = torch.rand(probs.shape[0], 1, device=probs.device)
        cdf = probs.cumsum(-1)
        return (cdf < u * cdf[:, -1:]).sum(-1).clamp(max=255).to(torch.uint8)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = self.labels_for(model, n)
        c, h, w = model.image_shape
        x = torch.zeros(n, c, h, w, dtype=torch.uint8, device=model.device)
        if self.cache and hasattr(model, "new_cache"):
            cache, previous = model.new_cache(n), None
            for i in range(h):
                for j in range(w):
                    for ch in range(c):
                        previous = self.draw(model.next_logits(cache, previous, labels))
                        x[:, ch, i, j] = previous
            return x
        for i in range(h):
            for j in range(w):
                top, bottom, left, right = self.window(model, i, j) if self.cache else (0, h, 0, w)
                for ch in range(c):
                    window = x[:, :, top:bottom, left:right]
                    logits = model.logits(window, labels).view(n, c, 256, bottom - top, right - left)
                    x[:, ch, i, j] = self.draw(logits[:, ch, :, i - top, j - left])
        return x

    @staticmethod
    def window(model: GenerativeModel, i: int, j: int) -> tuple[int, int, int, int]:
        """Rows top:bottom and columns left:right whose (zero-padded) convolution gives the
        exact logits of pixel (i, j): the model's reach up and either side, nothing below."""
        _, h, w = model.image_shape
        rows, cols = getattr(model, "rows_needed", None), getattr(model, "cols_needed", None)
        top = 0 if rows is None else max(0, i - rows)
        left, right = (0, w) if cols is None else (max(0, j - cols), min(w, j + cols + 1))
        return top, i + 1, left, right
