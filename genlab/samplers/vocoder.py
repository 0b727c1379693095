"""Vocoding with a flow conditioned on a mel-spectrogram (WaveGlow): new audio for held-out clips."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler


class VocoderSampler(Sampler):
    """Draws clip i from the model given the mel-spectrogram of the model's conditioning clip i
    (``model.conditioning_clips(n)``: held-out clips it stores), with the base noise scaled by a
    temperature: 1 is the model's own distribution, WaveGlow's paper uses 0.6; 0 maps z = 0."""

    families = ("vocoder",)

    def __init__(self, temperature: float = 0.6) -> None:
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ConfigError(f"sampler.temperature must be a number >= 0, got {temperature!r}")
        self.temperature = float(temperature)

    @torch.no_grad()
    def sample(self, model: GenerativeModel, n: int, labels: Optional[Tensor] = None) -> Tensor:
        return self.sample_series(model, 0, n)[0]

    def labelled(self, model: GenerativeModel) -> bool:
        """A vocoded clip is meant to be of the class of the clip it re-synthesises."""
        return model.num_classes > 0

    @torch.no_grad()
    def sample_series(self, model: GenerativeModel, start: int, stop: int,
                      labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Clips ``start`` .. ``stop`` - 1 of the model's conditioning clips (cycled), vocoded, and
        their labels (the digit or speaker of the clip each re-synthesises)."""
        clips, targets = model.conditioning_clips(stop - start, start)
        return model.vocode(clips, self.temperature), (targets if self.labelled(model) else None)
