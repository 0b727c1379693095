"""How samples are drawn, kept apart from how a model is trained (DESIGN.md, contract 3)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel


class Sampler:
    """Draws ``n`` samples from a model and returns uint8 images [n, C, H, W] in 0..255.

    Randomness comes from torch's global generator: callers that need reproducible samples
    seed it (see ``genlab.utils.seeded``).
    """

    #: the model families this sampler serves
    families: ClassVar[tuple[str, ...]] = ()
    #: for conditional models: the classes to draw, cycled (None = every class in turn)
    classes: Optional[list[int]] = None
    #: the picture grids ``genlab-sample grid=<name>`` can ask of this sampler (``grid``)
    grids: ClassVar[tuple[str, ...]] = ()

    def check(self, model: GenerativeModel, compatible: Optional[list[str]] = None) -> None:
        """Refuse a model of a family this sampler does not serve, naming the samplers that do."""
        if model.family in self.families:
            return
        fits = ", ".join(f"sampler={name}" for name in (compatible or [])) or "none yet"
        raise ConfigError(
            f"sampler {type(self).__name__} serves the families {list(self.families)}, "
            f"not '{model.family}' (the chosen model). Samplers that fit: {fits}."
        )

    def default_labels(self, model: GenerativeModel, n: int) -> Optional[Tensor]:
        """Balanced class labels for a conditional model, None for an unconditional one."""
        if model.num_classes <= 0 or not model.conditional:
            return None
        return torch.arange(n, device=model.device) % model.num_classes

    def labels_for(self, model: GenerativeModel, n: int) -> Optional[Tensor]:
        """The labels to draw n samples with: ``classes`` cycled, or every class in turn."""
        if self.classes is None or not model.conditional:
            return self.default_labels(model, n)
        bad = [c for c in self.classes if not 0 <= c < model.num_classes]
        if bad:
            raise ConfigError(f"sampler.classes {bad} out of range 0..{model.num_classes - 1}")
        return torch.tensor(self.classes, device=model.device).repeat(n // len(self.classes) + 1)[:n]

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def labelled(self, model: GenerativeModel) -> bool:
        """Whether ``sample_series`` says which class each sample is meant to be of (what a class
        accuracy of the samples needs): a conditional model's samples are of the labels asked."""
        return bool(model.conditional)

    @torch.no_grad()
    def sample_series(self, model: GenerativeModel, start: int, stop: int,
                      labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Samples ``start`` .. ``stop`` - 1 of a numbered series (a metric draws it in chunks) and
        the class each is meant to be of, or None (``labelled``): here the ``labels`` asked."""
        return self.sample(model, stop - start, labels), (labels if self.labelled(model) else None)

    def grid(self, model: GenerativeModel, name: str, rows: int, options: Any) -> tuple[Tensor, int]:
        """One of ``grids``: (uint8 samples laid out row by row, samples per row). ``options`` is
        genlab-sample's config (its ``grid_*`` keys)."""
        raise NotImplementedError(f"{type(self).__name__} draws no grids")


def decoder_options(temperature: float, pixels: str) -> tuple[float, str]:
    """``sampler.temperature`` (>= 0) and ``sampler.pixels`` (mean | sample) of the samplers that
    draw latents and decode them into a pixel distribution, checked."""
    if temperature < 0:
        raise ConfigError(f"sampler.temperature must be >= 0, got {temperature}")
    if pixels not in ("mean", "sample"):
        raise ConfigError(f"sampler.pixels must be 'mean' or 'sample', got {pixels!r}")
    return float(temperature), pixels
