"""The 8x8 handwritten digits shipped inside scikit-learn: the embedded, offline default."""

from __future__ import annotations

from typing import Any, Optional

import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from genlab.data.base import ImageDataModule, TensorImages, convert_images

NUM_DIGITS = 1797  # size of sklearn's digits set; known without loading it


class DigitsDataModule(ImageDataModule):
    """1,797 grey 8x8 digits (10 classes), split into train/val/test by the fractions.

    sklearn stores pixel values 0..16; they become 8-bit values round(v * 255 / 16).
    """

    native_classes = 10
    mirror_symmetric = False  # a mirrored digit is not a digit

    def __init__(
        self, *, name: str = "digits", channels: int = 1, image_size: int = 8, num_classes: int = 10, **kwargs: Any
    ) -> None:
        """Digits' own defaults; the other arguments are ImageDataModule's."""
        super().__init__(name=name, channels=channels, image_size=image_size, num_classes=num_classes, **kwargs)

    def _inspect(self) -> tuple[int, Optional[int]]:
        return NUM_DIGITS, None

    def _load(self) -> dict[str, Dataset]:
        digits = load_digits()
        values = torch.from_numpy(digits.images).reshape(-1, 1, 8, 8)
        images = torch.round(values * 255 / 16).to(torch.uint8)
        data = TensorImages(convert_images(images, self.channels, self.image_size), self._labels(digits.target))
        return {split: data.subset(idx) for split, idx in self._split_indices(len(data), with_test=True).items()}
