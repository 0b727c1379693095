"""Images [C, H, W]: PNG sample grids, grids sent to W&B / TensorBoard, a small CNN for FID.

torch, torchvision and Lightning are imported where they are used: the config asks
``ImageModality.default_extractor`` before any of them is imported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from genlab.modalities import Modality

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn


def image_grid(images: Tensor, nrow: Optional[int] = None, min_size: int = 32) -> Tensor:
    """uint8 [N, C, H, W] -> float grid [3 or 1, H', W'] in [0, 1], small images upscaled."""
    import torch.nn.functional as F
    from torchvision.utils import make_grid

    x = images.float() / 255
    if x.shape[-1] < min_size:
        x = F.interpolate(x, scale_factor=math.ceil(min_size / x.shape[-1]), mode="nearest")
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)


def grid_pixels(grid: Tensor) -> np.ndarray:
    """A float grid in [0, 1] as the uint8 [H, W, C] array its PNG holds (torchvision's rounding).
    W&B casts a float array to uint8 without scaling (an image of 0s and 1s): it gets this."""
    import torch

    return grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def save_grid(images: Tensor, path: str | Path, nrow: Optional[int] = None) -> None:
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), str(path))


class ImageModality(Modality):
    name = "image"
    extractors = ("classifier", "inception")
    data_dims = 3

    @classmethod
    def default_extractor(cls, data_shape: Sequence[int], num_classes: int) -> str:
        """Inception sees colour pictures: the default for RGB or unlabelled images. Grey labelled
        images (digits, MNIST, Fashion-MNIST) are far from its domain of natural photos: genlab's
        own classifier, trained on the labels, fits them and needs no download (runs stay offline)."""
        colour_or_unlabelled = int(data_shape[0]) == 3 or int(num_classes or 0) <= 1
        return "inception" if colour_or_unlabelled else "classifier"

    def save(self, samples: Tensor, stem: Path, nrow: Optional[int] = None) -> list[Path]:
        path = Path(stem).with_suffix(".png")
        save_grid(samples, path, nrow)
        return [path]

    def log(self, samples: Tensor, loggers: Sequence[Any], step: int, tag: str = "samples",
            files: Sequence[Path] = ()) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        grid = image_grid(samples)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(tag, [grid_pixels(grid)], step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, step)

    def classifier_arch(self, num_classes: int) -> dict[str, int]:
        channels, image_size, _ = self.data_shape
        return {"channels": channels, "image_size": image_size, "num_classes": int(num_classes),
                "width": 32, "feature_dim": 64}

    @staticmethod
    def classifier_net(**arch: int) -> nn.Module:
        from genlab.nets.classifier import ClassifierNet

        return ClassifierNet(**arch)
