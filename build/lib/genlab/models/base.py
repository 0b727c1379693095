"""The contract every model family implements (see DESIGN.md, contracts 1-3)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor


class GenerativeModel(pl.LightningModule):
    """Base LightningModule of every family.

    Batches are ``(x, y)``: ``x`` uint8 pixels in 0..255 of shape [B, C, H, W], ``y`` the class
    label (-1 where the dataset has none). Each family maps ``x`` into its own space itself.
    """

    #: family name, matched against ``Sampler.families``
    family: ClassVar[str] = ""
    #: "exact", "bound", or None for families without a likelihood (bits/dim not applicable)
    likelihood: ClassVar[Optional[str]] = None
    #: what the model's own steps log, as ``train/<name>`` and ``val/<name>``
    step_metrics: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """-log2 p(x) of the discrete 8-bit ``x``, one value per example (shape [B])."""
        raise NotImplementedError(f"the {self.family} family has no likelihood")

    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        optimizer = self._optimizer_factory(params=self.parameters())
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
