"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own loaders, offline first."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.error import URLError

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
from torchvision.datasets.utils import check_integrity, extract_archive

from genlab.data.base import ImageDataModule, TensorImages, convert_images, refuse_dangling_link
from genlab.errors import DataError

POOLS = ("official", "train", "test")
#: seconds a download may wait for the server (to connect, or for the next bytes) before it fails
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Source:
    cls: type
    channels: int
    image_size: int
    sizes: dict[bool, int]  # official split (train=True/False) -> number of images
    mirror_symmetric: bool  # a mirrored image is still one of the data (dataset.hflip is valid)


SOURCES = {
    "mnist": _Source(MNIST, 1, 28, {True: 60000, False: 10000}, False),
    "fashion_mnist": _Source(FashionMNIST, 1, 28, {True: 60000, False: 10000}, True),
    "cifar10": _Source(CIFAR10, 3, 32, {True: 50000, False: 10000}, True),
}


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset held in memory as uint8 tensors.

    ``pool`` chooses what is split: "official" = the official train set cut into train/val
    (``val_fraction`` of it; ``test_fraction`` is unused) with the official test set as test;
    "train" or "test" = only that official split, cut into train/val/test by the fractions
    (e.g. the 10,000 MNIST test images when only those exist offline).

    Files are read from ``root`` where torchvision looks for them (``<root>/MNIST/raw/``,
    ``<root>/cifar-10-batches-py/``); torchvision's download runs only for missing files and
    only with ``download=True``.
    """

    native_classes = 10

    def __init__(
        self,
        *,
        name: str,
        channels: Optional[int] = None,
        image_size: Optional[int] = None,
        num_classes: int = 10,
        download: bool = True,
        pool: str = "official",
        **kwargs: Any,
    ) -> None:
        """``channels`` and ``image_size`` default to the dataset's own; the other arguments are
        ImageDataModule's."""
        native = SOURCES.get(name, SOURCES["mnist"])  # an unknown name fails in check(), naming dataset.name
        super().__init__(
            name=name,
            channels=native.channels if channels is None else channels,
            image_size=native.image_size if image_size is None else image_size,
            num_classes=num_classes,
            **kwargs,
        )
        self.download = download
        self.pool = pool

    # ------------------------------------------------------------------ checks

    @property
    def _source(self) -> _Source:
        return SOURCES[self.name]

    @property
    def mirror_symmetric(self) -> bool:  # type: ignore[override]
        return self._source.mirror_symmetric

    def _official_splits(self) -> list[bool]:
        """The official splits (train=True/False) that the pool needs."""
        return {"official": [True, False], "train": [True], "test": [False]}[self.pool]

    def _check_config(self) -> None:
        if self.name not in SOURCES:
            raise DataError(
                f"dataset.name={self.name!r} is not a torchvision dataset genlab knows: use one of "
                f"{sorted(SOURCES)}, or the image_folder dataset for other images."
            )
        if self.pool not in POOLS:
            raise DataError(f"dataset.pool={self.pool!r} is not one of {list(POOLS)}.")
        super()._check_config()

    def _inspect(self) -> tuple[int, Optional[int]]:
        if self.root is None:
            raise DataError(
                f"dataset.root is not set: set dataset.root=<folder> where torchvision finds or "
                f"downloads {self.name} (e.g. dataset.root=data)."
            )
        refuse_dangling_link(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"dataset.root={self.root} is not a directory: point it at a folder.")
        self._fetch()
        sizes = self._source.sizes
        if self.pool == "official":
            return sizes[True], sizes[False]
        return sizes[self.pool == "train"], None

    # ------------------------------------------------------------------ files

    def _folder(self) -> Path:
        """Where torchvision keeps the extracted files."""
        assert self.root is not None
        if issubclass(self._source.cls, MNIST):
            return self.root / self._source.cls.__name__ / "raw"
        return self.root / CIFAR10.base_folder

    def _files(self, train: bool) -> list[tuple[Path, Path, str]]:
        """(extracted file, archive holding it, archive md5) for each file of an official split."""
        cls = self._source.cls
        folder = self._folder()
        if issubclass(cls, MNIST):
            prefix = "train" if train else "t10k"
            return [
                (folder / gz[: -len(".gz")], folder / gz, md5)
                for gz, md5 in cls.resources
                if gz.startswith(prefix)
            ]
        assert self.root is not None
        names = [n for n, _ in (CIFAR10.train_list if train else CIFAR10.test_list)] + [CIFAR10.meta["filename"]]
        return [(folder / n, self.root / CIFAR10.filename, CIFAR10.tgz_md5) for n in names]

    def _missing(self, train: bool) -> list[Path]:
        """Files that exist neither extracted nor as an archive (as the user would place them)."""
        return [
            archive if issubclass(self._source.cls, MNIST) else path
            for path, archive, _ in self._files(train)
            if not path.exists() and not archive.exists()
        ]

    def _extract(self, train: bool) -> None:
        """Extract the archives that are present, without network (torchvision's download would fetch
        corrupt ones again)."""
        for path, archive, md5 in self._files(train):
            if path.exists():
                continue
            if not check_integrity(str(archive), md5):
                raise DataError(
                    f"{archive} is corrupt (its md5 is not the official {md5}): delete it and put a good "
                    "copy there, or set dataset.download=true to download it again."
                )
            try:
                extract_archive(str(archive), str(archive.parent))
            except OSError as e:
                raise DataError(
                    f"could not extract {archive} into {archive.parent}: {e}. Make that folder writable, "
                    f"or extract the archive there yourself."
                ) from e

    def _files_hint(self, train: bool) -> str:
        if issubclass(self._source.cls, MNIST):
            return ", ".join(str(archive) for _, archive, _ in self._files(train))
        assert self.root is not None
        return f"{self.root / CIFAR10.filename} (or its extracted folder {self._folder()}/)"

    def _pool_hint(self) -> str:
        if self.pool == "official" and not self._missing(False):
            return (
                f" Only the official test split is there: set dataset.pool=test to split its "
                f"{self._source.sizes[False]} images into train/val/test."
            )
        return ""

    def prepare_data(self) -> None:
        """Lightning's hook (local rank 0): check() readies the files, downloading only if allowed."""
        self.check()

    def _fetch(self) -> None:
        """Make the needed files ready: extract archives found offline, download only if allowed."""
        splits = self._official_splits()
        missing = {train: self._missing(train) for train in splits}
        absent = [path for train in splits for path in missing[train]]
        if absent and not self.download:
            raise DataError(
                f"{self.name} not found: missing {', '.join(map(str, absent))}. Put the files there "
                f"(dataset.root={self.root}), or set dataset.download=true.{self._pool_hint()}"
            )
        for train in splits:
            if all(path.exists() for path, _, _ in self._files(train)):
                continue
            if not self.download:
                self._extract(train)
                continue
            try:  # torchvision verifies and extracts archives; downloads what is absent or corrupt
                self._download(train)
            except (URLError, OSError, RuntimeError) as e:
                reason = (str(e).strip().splitlines() or [""])[-1]
                raise DataError(
                    f"{self.name} could not be downloaded to dataset.root={self.root} (no network?): "
                    f"{type(e).__name__}: {reason}. Fix: put the files at the exact paths torchvision "
                    f"reads, {', '.join(dict.fromkeys(self._files_hint(t) for t in splits if missing[t]))}, and set dataset.root={self.root} (or the folder "
                    f"that holds them); once they are there, set dataset.download=false.{self._pool_hint()}"
                ) from e

    def _download(self, train: bool) -> None:
        """torchvision's download of one official split, failing when the server is silent for
        ``DOWNLOAD_TIMEOUT_S``. If it fails, what the attempt created goes again: folders and files,
        except archives that arrived complete (md5 checked); what was there before stays."""
        chain = [self._folder(), *self._folder().parents]
        files = {path: None for path, _, _ in self._files(train)}
        files.update({archive: md5 for _, archive, md5 in self._files(train)})
        existed = {p for p in [*files, *chain] if p.exists()}
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen waits forever otherwise
        try:
            self._open(train, download=True)
        except BaseException:
            for path, md5 in files.items():
                if path not in existed and path.is_file() and not (md5 and check_integrity(str(path), md5)):
                    path.unlink()
            for folder in chain:  # deepest first; a folder that is not empty stays
                if folder not in existed:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
        finally:
            socket.setdefaulttimeout(timeout)

    def _open(self, train: bool, download: bool) -> Any:
        """torchvision's own loader for one official split."""
        cls = self._source.cls
        dataset = cls.__new__(cls)
        # torchvision checks (and downloads) the files of *both* official splits before reading
        # one; restrict that to the split read here, so that e.g. the MNIST test files suffice.
        if issubclass(cls, MNIST):
            prefix = "train" if train else "t10k"
            dataset.resources = [r for r in cls.resources if r[0].startswith(prefix)]
        elif train:
            dataset.test_list = []
        else:
            dataset.train_list = []
        dataset.__init__(str(self.root), train=train, download=download)
        return dataset

    # ------------------------------------------------------------------ loading

    def _read(self, train: bool) -> TensorImages:
        try:
            dataset = self._open(train, download=False)
        except Exception as e:  # a truncated or foreign file: name the folder and the fix
            raise DataError(
                f"could not read the {'train' if train else 'test'} split of {self.name} from {self._folder()}: "
                f"{type(e).__name__}: {e}. Delete the broken files there and put good copies back "
                "(or let dataset.download=true fetch them)."
            ) from e
        data = dataset.data
        if isinstance(data, Tensor):  # MNIST family: uint8 [N, H, W]
            images = data.unsqueeze(1)
        else:  # CIFAR: numpy uint8 [N, H, W, C]
            images = torch.from_numpy(data).permute(0, 3, 1, 2)
        images = convert_images(images.contiguous(), self.channels, self.image_size)
        return TensorImages(images, self._labels(torch.as_tensor(dataset.targets)))

    def _load(self) -> dict[str, Dataset]:
        if self.pool == "official":
            train = self._read(True)
            idx = self._split_indices(len(train), with_test=False)
            return {"train": train.subset(idx["train"]), "val": train.subset(idx["val"]), "test": self._read(False)}
        data = self._read(self.pool == "train")
        return {split: data.subset(idx) for split, idx in self._split_indices(len(data), with_test=True).items()}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "pool": self.pool}
