"""Samples after every validation: written by the data's modality (a PNG grid for images) and
sent to the loggers."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from genlab.checks import require_positive
from genlab.utils import seeded


class SampleGrid(pl.Callback):
    def __init__(self, dirpath: str, n: int = 64, seed: int = 0, every_n_epochs: int = 1) -> None:
        require_positive("callbacks.samples", n=n, every_n_epochs=every_n_epochs)
        self.dirpath = Path(dirpath)
        self.n = n
        self.seed = seed
        self.every_n_epochs = every_n_epochs

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        was_training = pl_module.training
        pl_module.eval()
        with seeded(self.seed):  # the same latents every time: the grids show progress
            samples = pl_module.sampler.sample(pl_module, self.n).cpu()
        pl_module.train(was_training)
        modality = trainer.datamodule.modality
        modality.save(samples, self.dirpath / f"epoch{trainer.current_epoch:03d}-step{trainer.global_step:06d}")
        modality.log(samples, trainer.loggers, trainer.global_step)
