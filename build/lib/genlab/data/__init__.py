"""LightningDataModules that yield batches in the 8-bit data contract (DESIGN.md, contract 1).

A batch is ``(x, y)``: ``x`` uint8 pixels 0..255 of shape [B, C, H, W], ``y`` int64 class
labels, or -1 for every example of an unlabelled dataset.
"""

from genlab.data.base import ImageDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.image_folder import ImageFolderDataModule
from genlab.data.torchvision_sets import TorchvisionDataModule
from genlab.errors import DataError

__all__ = ["DataError", "DigitsDataModule", "ImageDataModule", "ImageFolderDataModule", "TorchvisionDataModule"]
