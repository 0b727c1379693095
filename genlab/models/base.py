"""The contract every model family implements (see DESIGN.md, contracts 1-3)."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.errors import ConfigError, TrainingDiverged


#: nats per bit
LOG2 = math.log(2.0)


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
    #: the sub-module the EMA callback averages, what samples are drawn from ("" = the whole model)
    averaged_module: ClassVar[str] = ""
    #: sub-modules of the averaged one that keep moving averages of their own (an EMA codebook):
    #: the EMA callback copies their current state into the average instead of averaging it again
    self_averaging: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        if conditional and num_classes <= 0:
            raise ConfigError(
                "model.conditional=true needs a labelled dataset, but dataset.num_classes is "
                f"{num_classes}; pick a labelled dataset or set model.conditional=false"
            )
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        #: draws and learns p(x | class); samplers pass labels to such models
        self.conditional = bool(conditional)
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self._loss_checked = False  # check_finite ran since the last backward pass

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """-log2 p(x) of the discrete 8-bit ``x``, one value per example (shape [B])."""
        raise NotImplementedError(f"the {self.family} family has no likelihood")

    def class_labels(self, y: Optional[Tensor]) -> Optional[Tensor]:
        """The labels a conditional model is given, as long integers (None for an unconditional
        model); a conditional one refuses a missing label or the -1 of unlabelled data."""
        if not self.conditional:
            return None
        if y is None or (y < 0).any():
            raise ValueError(f"a conditional {type(self).__name__} needs class labels y in 0..{self.num_classes - 1}")
        return y.long()

    def log_stage(self, stage: str, metrics: dict[str, Tensor], batch_size: int) -> None:
        """Log ``<stage>/<name>`` for each metric: per step while training (the loss on the
        progress bar), per epoch and reduced over processes in validation and test."""
        on_step = stage == "train"
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                     prog_bar=on_step and name == "loss", batch_size=batch_size)

    def stands_on(self) -> dict[str, Any]:
        """The earlier runs this model is built on (a second stage names its first), recorded
        in the run's metrics.json and checkpoints so that a report can trace them."""
        return {}

    def check_trainer(self, trainer_cfg: Any) -> None:
        """Raise ConfigError for ``trainer.*`` settings this model cannot honour (called before
        training; e.g. a family with manual optimization refuses Lightning's gradient clipping)."""

    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        optimizer = self._optimizer_factory(params=self.parameters())
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """One batch of ``stage`` ("train", "val" or "test"): log ``<stage>/<metric>`` and return
        the loss. Families whose stages differ override the Lightning step methods instead."""
        raise NotImplementedError(f"{type(self).__name__} implements neither shared_step nor training_step")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test")

    def check_finite(self, **terms: Tensor) -> None:
        """Stop the run with a clear message when any loss term is NaN or inf.

        Families call this in ``training_step`` with their named loss terms before the backward
        pass; ``on_before_backward`` calls it with the total loss for any family that does not.
        All ranks take the same decision, so under DDP no rank is left waiting in a collective.
        """
        self._loss_checked = True
        finite = all(bool(torch.isfinite(v.detach()).all()) for v in terms.values())
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        values = ", ".join(f"{name}={float(v.detach().float().mean()):.4g}" for name, v in terms.items())
        raise TrainingDiverged(
            f"the training loss is not finite at step {self.global_step} (epoch {self.current_epoch}): "
            f"{values}. The run stops here; the last checkpoint written before this step is kept. "
            "Lower optimizer.lr, set trainer.gradient_clip_val, or check the data for bad values."
        )

    def on_before_backward(self, loss: Tensor) -> None:
        # once per backward pass: skipped when the family checked its named terms already
        if self._loss_checked:
            self._loss_checked = False
            return
        self.check_finite(loss=loss)
        self._loss_checked = False
