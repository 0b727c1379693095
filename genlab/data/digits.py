"""The 8x8 handwritten digits shipped inside scikit-learn: the embedded, offline default."""

from __future__ import annotations

from typing import Optional

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

    def __init__(
        self,
        *,
        name: str = "digits",
        root: Optional[str] = None,
        channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            name=name, root=root, channels=channels, image_size=image_size, num_classes=num_classes,
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
            val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        )  # fmt: skip

    def _inspect(self) -> tuple[int, Optional[int]]:
        return NUM_DIGITS, None

    def _load(self) -> dict[str, Dataset]:
        digits = load_digits()
        values = torch.from_numpy(digits.images).reshape(-1, 1, 8, 8)
        images = torch.round(values * 255 / 16).to(torch.uint8)
        data = TensorImages(convert_images(images, self.channels, self.image_size), self._labels(digits.target))
        return {split: data.subset(idx) for split, idx in self._split_indices(len(data), with_test=True).items()}
