"""Images [C, H, W]: PNG sample grids, grids sent to W&B / TensorBoard, a small CNN for FID."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from genlab.modalities import Modality
from genlab.nets.classifier import ClassifierNet


def image_grid(images: Tensor, nrow: Optional[int] = None, min_size: int = 32) -> Tensor:
    """uint8 [N, C, H, W] -> float grid [3 or 1, H', W'] in [0, 1], small images upscaled."""
    x = images.float() / 255
    if x.shape[-1] < min_size:
        x = F.interpolate(x, scale_factor=math.ceil(min_size / x.shape[-1]), mode="nearest")
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)


def save_grid(images: Tensor, path: str | Path, nrow: Optional[int] = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), str(path))


class ImageModality(Modality):
    name = "image"
    extractors = ("classifier", "inception")

    def save(self, samples: Tensor, stem: Path, nrow: Optional[int] = None) -> list[Path]:
        path = Path(stem).with_suffix(".png")
        save_grid(samples, path, nrow)
        return [path]

    def log(self, samples: Tensor, loggers: Sequence[Any], step: int, tag: str = "samples") -> None:
        grid = image_grid(samples)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(tag, [grid], step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, step)

    def classifier_arch(self, num_classes: int) -> dict[str, int]:
        channels, image_size, _ = self.data_shape
        return {"channels": channels, "image_size": image_size, "num_classes": int(num_classes),
                "width": 32, "feature_dim": 64}

    @staticmethod
    def classifier_net(**arch: int) -> nn.Module:
        return ClassifierNet(**arch)
