"""LightningDataModules that yield batches in the 8-bit data contract (DESIGN.md, contract 1).

A batch is ``(x, y)``: ``x`` integers 0..vocab_size-1 of shape [B, *data_shape], ``y`` int64 class
labels, or -1 for every example of an unlabelled dataset.
"""

from genlab.data.base import DataModule, ImageDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.image_folder import ImageFolderDataModule
from genlab.data.torchvision_sets import TorchvisionDataModule
from genlab.errors import DataError

__all__ = ["DataError", "DataModule", "DigitsDataModule", "ImageDataModule", "ImageFolderDataModule", "TorchvisionDataModule"]
