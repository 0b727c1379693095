"""How samples are drawn, kept apart from how a model is trained (DESIGN.md, contract 3)."""

from __future__ import annotations

from typing import ClassVar, Optional

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
        if model.num_classes <= 0 or not getattr(model, "conditional", False):
            return None
        return torch.arange(n, device=model.device) % model.num_classes

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError
