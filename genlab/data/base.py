"""The common base of genlab's datamodules and the data contract (DESIGN.md, contract 1).

A batch is ``(x, y)``: ``x`` an integer tensor of values in 0..vocab_size-1 shaped
[B, *data_shape] (uint8 pixels [B, C, H, W] for images, 8-bit mu-law [B, C, T] for audio),
``y`` an int64 class label, or -1 for every example of an unlabelled dataset. Nothing here
converts values to floats: each model maps ``x`` into its own space. A datamodule states its
``data_shape``, ``vocab_size`` and ``modality`` (genlab.modalities: how its samples are written,
shown and measured).
"""

from __future__ import annotations

import copy
import errno
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms.v2 import functional as F

from genlab.checks import cpus_available
from genlab.errors import DataError
from genlab.modalities import Modality
from genlab.modalities.image import ImageModality

SPLITS = ("train", "val", "test")


class TensorData(Dataset):
    """Examples held in memory: integer data [N, *data_shape] and int64 labels [N]."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        assert not images.is_floating_point() and images.ndim >= 2, (images.dtype, images.shape)
        assert len(images) == len(labels)
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: Tensor) -> "TensorData":
        return type(self)(self.images[indices], self.labels[indices])


class TensorImages(TensorData):
    """Images held in memory: uint8 [N, C, H, W] and int64 labels [N]."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        super().__init__(images, labels)


def convert_images(images: Tensor, channels: int, image_size: int, chunk: int = 4096) -> Tensor:
    """Convert uint8 [N, C, H, W] to ``channels`` and a ``image_size`` square, staying uint8.

    Grey <-> RGB conversion; resize of the shorter side (antialiased) plus a center crop.
    Done in chunks so that upscaling a large set does not need one huge float temporary.
    """
    n, c, h, w = images.shape
    if c == channels and h == w == image_size:
        return images
    parts = []
    for start in range(0, n, chunk):
        x = images[start : start + chunk]
        if c != channels:
            x = F.rgb_to_grayscale(x) if channels == 1 else x.expand(-1, 3, -1, -1)
        if not h == w == image_size:
            if min(h, w) != image_size:
                x = F.resize(x, image_size, antialias=True)
            x = F.center_crop(x, [image_size, image_size])
        parts.append(x.contiguous())
    return torch.cat(parts)


class EpochShuffle(RandomSampler):
    """A random order that depends only on the seed and the epoch (Lightning calls
    ``set_epoch``), not on how many random numbers were drawn before."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        super().__init__(dataset)
        self.seed, self.epoch = seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


def refuse_dangling_link(root: Path) -> None:
    """dataset.root as a symbolic link that leads nowhere: say so (Path.exists() says only False)."""
    if root.is_symlink() and not root.exists():
        raise DataError(
            f"dataset.root={root} is a symbolic link that leads nowhere (a link loop or a missing target): "
            "point dataset.root at the folder itself."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class DataModule(pl.LightningDataModule):
    """Common base of every modality: config checks, the seeded train/val/test split and the
    dataloaders.

    Subclasses state ``data_shape`` (a tuple), ``vocab_size`` and ``modality``, implement
    ``_inspect`` (cheap checks of the source, returning its sizes) and ``_load`` (the data as
    datasets), and add the keys that change their data to ``identity``.
    """

    #: classes of the source (0 for an unlabelled source); None where it is discovered
    native_classes: Optional[int] = None
    #: values per dimension of x (0..vocab_size-1)
    vocab_size: int = 256

    def __init__(
        self,
        *,
        name: str,
        root: Optional[str] = None,
        num_classes: int,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        """The arguments every datamodule takes (subclasses pass them through ``**kwargs``).

        name: the dataset's name. root: its folder (None where it needs none). num_classes: 0 = unlabelled.
        eval_batch_size: the val/test batch size (default batch_size). val_fraction,
        test_fraction: shares of the pool held out. seed: seeds the split alone.
        """
        super().__init__()
        self.name = name
        # Resolved once, here: the working directory may change later (Hydra can chdir).
        self.root: Optional[Path] = Path(root).expanduser().absolute() if root not in (None, "") else None
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self._checked = False
        self._splits: Optional[dict[str, Dataset]] = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example x: [C, H, W] for images, [C, T] for audio."""
        raise NotImplementedError

    @property
    def modality(self) -> Modality:
        """What writes, shows and measures this data (genlab.modalities)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- checks

    def check(self) -> None:
        """Validate config and source without long work; raise DataError naming key, path and fix."""
        if self._checked:
            return
        self._check_config()
        try:
            pool, official_test = self._inspect()
        except OSError as e:  # a symlink loop (ELOOP), a folder without read permission, ...
            what = "is a symbolic link loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
            raise DataError(f"{e.filename} {what}: remove it from dataset.root={self.root} or fix it, "
                            "then run again.") from None
        self._check_num_classes()
        self._check_fractions(pool, official_test)
        self._checked = True

    def _check_config(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise DataError(f"dataset.{key}={value!r} must be a positive integer.")
        if not _is_int(self.num_workers) or self.num_workers < 0:
            raise DataError(f"dataset.num_workers={self.num_workers!r} must be an integer >= 0.")
        # Each worker is a process (per DDP rank): more than the CPUs only costs memory and
        # start-up time. Two are always allowed: the image_folder default, on any machine.
        most = max(2, cpus_available())
        if self.num_workers > most:
            raise DataError(
                f"dataset.num_workers={self.num_workers} starts that many loader processes, but this process "
                f"may use {cpus_available()} CPUs: set dataset.num_workers to at most {most} (0 = load in the "
                "main process)."
            )
        if not _is_int(self.num_classes) or self.num_classes < 0:
            raise DataError(
                f"dataset.num_classes={self.num_classes!r} must be an integer >= 0 (0 = unlabelled)."
            )
        if not _is_int(self.seed):
            raise DataError(f"dataset.seed={self.seed!r} must be an integer.")

    def _check_num_classes(self) -> None:
        native = self.native_classes
        if native is not None and self.num_classes not in (0, native):
            raise DataError(
                f"dataset.num_classes={self.num_classes} but {self.name} has {native} classes: "
                f"set dataset.num_classes={native} (or 0 to ignore the labels)."
            )

    def _check_fractions(self, pool: int, official_test: Optional[int]) -> None:
        """``pool`` images are split into train/val (and test, unless there is an official test set)."""
        keys = ["val_fraction"] if official_test is not None else ["val_fraction", "test_fraction"]
        for key in keys:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise DataError(f"dataset.{key}={value!r} must be a number in [0, 1).")
        if official_test is None and self.val_fraction + self.test_fraction >= 1:
            raise DataError(
                f"dataset.val_fraction + dataset.test_fraction = "
                f"{self.val_fraction + self.test_fraction:g} leaves nothing to train on: keep the sum below 1."
            )
        sizes = self._split_sizes(pool, official_test is None)
        for split in ("val", "test"):
            key = f"{split}_fraction"
            if key in keys and sizes[split] == 0:
                raise DataError(
                    f"dataset.{key}={getattr(self, key)!r} gives an empty {split} split of the "
                    f"{pool} images of {self.name}: raise it to at least {1 / pool:.2g}."
                )
        if sizes["train"] == 0:
            raise DataError(
                f"dataset.val_fraction/dataset.test_fraction leave no training images out of {pool}: lower them."
            )

    # ----------------------------------------------------------------------- splits

    def _split_sizes(self, n: int, with_test: bool) -> dict[str, int]:
        n_test = round(n * self.test_fraction) if with_test else 0
        n_val = round(n * self.val_fraction)
        return {"train": n - n_val - n_test, "val": n_val, "test": n_test}

    def _split_indices(self, n: int, with_test: bool) -> dict[str, Tensor]:
        """Deterministic split of range(n) from ``seed`` alone (the global RNG is not used)."""
        sizes = self._split_sizes(n, with_test)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        # Kept in random order: a metric that reads the first n images of val still sees every class.
        test, val, train = perm.split([sizes["test"], sizes["val"], sizes["train"]])
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: Optional[str] = None) -> None:
        self.check()
        if self._splits is None:
            self._splits = self._load()

    def split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train", "val" or "test"): items ``(x uint8 [C,H,W], y int)``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    # ------------------------------------------------------------------ dataloaders

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        # Stateful (a checkpoint records the position in the epoch) and shuffled by the seed and
        # epoch alone: a resumed run continues with the very batches it would have seen.
        dataset = self.split_dataset(split)
        # The epoch the loader serves first. Not current_epoch: a run resumed from a checkpoint
        # written at an epoch's end creates its loader (and the first iterator) before Lightning
        # counts that epoch as completed, and would replay the finished epoch's order.
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(dataset, self.seed, epoch) if shuffle else None,
            drop_last=False,
            # the workers' seeds come from the loader's own generator: creating an iterator must
            # not draw from the global one (a resumed run creates other iterators than an
            # uninterrupted one, and its random numbers would shift: genlab.callbacks.resume)
            generator=torch.Generator().manual_seed(torch.initial_seed()),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # --------------------------------------------------------------------- identity

    def with_seed(self, seed: int) -> "DataModule":
        """The same data split with another seed (a copy; this one is left as it is)."""
        other = copy.copy(self)
        other.seed, other._splits = seed, None
        return other

    def identity(self) -> dict[str, Any]:
        """Everything that changes the data of a split: a cache key for FID reference statistics.
        Subclasses add their own keys (an image's size, a clip's length)."""
        return {
            "name": self.name,
            "root": str(self.root.resolve()) if self.root is not None else None,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }

    # ------------------------------------------------------------ subclass hooks

    def _inspect(self) -> tuple[int, Optional[int]]:
        """Check the source cheaply. Returns (pool size, official test size or None).

        With None the pool is split into train/val/test; otherwise into train/val and the
        official test set is the test split.
        """
        raise NotImplementedError

    def _load(self) -> dict[str, Dataset]:
        """The three split datasets (called once, after check)."""
        raise NotImplementedError

    def _labels(self, labels: Tensor) -> Tensor:
        """Labels as the contract wants them: -1 everywhere when num_classes is 0."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        return labels if self.num_classes > 0 else torch.full_like(labels, -1)


class ImageDataModule(DataModule):
    """8-bit images [C, H, W], square: ``channels`` 1 (grey) or 3 (RGB), sides ``image_size``."""

    def __init__(
        self,
        *,
        channels: int,
        image_size: int,
        data_shape: Optional[Sequence[int]] = None,
        vocab_size: int = 256,
        **kwargs: Any,
    ) -> None:
        """channels: 1 (grey) or 3 (RGB). image_size: the side of the square images. data_shape,
        vocab_size: what the config states for the models (checked against channels and
        image_size, and 256); the other arguments are DataModule's."""
        super().__init__(**kwargs)
        self.channels = channels
        self.image_size = image_size
        self.stated_shape = data_shape
        self.vocab_size = vocab_size

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def modality(self) -> ImageModality:
        return ImageModality(self.data_shape, self.vocab_size)

    def _check_config(self) -> None:
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise DataError(
                f"dataset.channels={self.channels!r} is not supported: use 1 (grey) or 3 (RGB)."
            )
        if not _is_int(self.image_size) or self.image_size < 4:
            raise DataError(
                f"dataset.image_size={self.image_size!r} is too small: use an integer >= 4 "
                "(images are resized and center-cropped to image_size x image_size)."
            )
        if self.vocab_size != 256:
            raise DataError(f"dataset.vocab_size={self.vocab_size!r}: images are 8-bit here, use 256.")
        check_stated_shape(self.stated_shape, self.data_shape, "dataset.channels and dataset.image_size")
        super()._check_config()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "channels": self.channels, "image_size": self.image_size}


def check_stated_shape(stated: Optional[Sequence[int]], actual: tuple[int, ...], source: str) -> None:
    """dataset.data_shape, where the config states it, must be the shape the data has."""
    if stated is None:
        return
    try:
        same = [int(s) for s in stated] == list(actual)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise DataError(
            f"dataset.data_shape={list(stated) if isinstance(stated, Sequence) else stated!r} but {source} give "
            f"{list(actual)}: leave dataset.data_shape to its default (it follows {source})."
        )
