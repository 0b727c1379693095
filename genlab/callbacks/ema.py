"""Exponential moving average of the weights, on top of Lightning's WeightAveraging.

Validation, checkpoints ("state_dict" holds the averaged weights) and the final model use
the average. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short
run is not dominated by the random initial weights.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging


class EMA(WeightAveraging):
    def __init__(self, decay: float = 0.999, every_n_steps: int = 1) -> None:
        def ema_update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
            n = float(num_averaged)
            d = min(decay, (1.0 + n) / (10.0 + n))
            return d * averaged + (1.0 - d) * current

        super().__init__(avg_fn=ema_update)
        self.every_n_steps = every_n_steps

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.every_n_steps == 0

    # Lightning swaps the average back at on_validation_epoch_end, before the metric callbacks'
    # own on_validation_epoch_end (bits/dim, FID, sample grids) has run; swap back only once
    # every callback has measured. The test stage after fit measures the average too.
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    # Lightning puts the average into the model at on_train_end, before the end-of-training
    # checkpoint (genlab.callbacks.run.LastCheckpoint, also at on_train_end: checkpoint callbacks
    # come last) is written, which would then hold the average twice and lose the raw weights.
    # The model becomes the average once fit is over instead, also where a resumed run had
    # nothing left to train.
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)
