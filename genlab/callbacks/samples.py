"""A grid of samples after every validation: saved as PNG and sent to the loggers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from genlab.checks import require_positive
from genlab.utils import seeded


def image_grid(images: torch.Tensor, nrow: int | None = None, min_size: int = 32) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float grid [3 or 1, H', W'] in [0, 1], small images upscaled."""
    x = images.float() / 255
    if x.shape[-1] < min_size:
        x = F.interpolate(x, scale_factor=math.ceil(min_size / x.shape[-1]), mode="nearest")
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)


def grid_pixels(grid: torch.Tensor) -> np.ndarray:
    """A float grid in [0, 1] as the uint8 [H, W, C] array its PNG holds (torchvision's rounding).
    W&B casts a float array to uint8 without scaling (an image of 0s and 1s): it gets this."""
    return grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), str(path))


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
            images = pl_module.sampler.sample(pl_module, self.n).cpu()
        pl_module.train(was_training)
        path = self.dirpath / f"epoch{trainer.current_epoch:03d}-step{trainer.global_step:06d}.png"
        save_grid(images, path)
        grid = image_grid(images)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid_pixels(grid)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, trainer.global_step)
