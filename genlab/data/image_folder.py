"""Any folder of images: one subfolder per class (labelled) or all images in one folder."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.transforms.v2 import functional as F

from genlab.data.base import ImageDataModule, TensorImages, refuse_dangling_link
from genlab.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: folders whose decoded images take at most this many bytes are decoded once, in setup
IN_MEMORY_BYTES = 512 * 2**20


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(folder: str | os.PathLike) -> list[os.DirEntry]:
    """Entries of a folder, sorted by name, without hidden ones (.ipynb_checkpoints, .DS_Store, ...)."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _refuse_link_back(entry: os.DirEntry, root: Path) -> None:
    """A symlinked folder that leads back to dataset.root or above it is a loop (ELOOP)."""
    if entry.is_symlink():
        target = Path(entry.path).resolve()
        if target == root.resolve() or target in root.resolve().parents:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), entry.path)


def _first_image(folder: str) -> Optional[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_image(name) and not name.startswith("."):
                return Path(dirpath) / name
    return None


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """16-bit grey images (PNG, TIFF) scaled to 8 bits, 65535 -> 255 (PIL's own conversion clips
    them at 255). Other modes are left to PIL's convert."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # PNG: at most 16 bits
        pixels = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.round(pixels * (255 / 65535)).astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        raise DataError(
            f"{path} holds {'32-bit integer' if img.mode == 'I' else 'floating-point'} pixels, which have no fixed "
            "range to map to 8 bits: save it as an 8- or 16-bit image, or remove it from dataset.root."
        )
    return img


def load_image(path: Path, channels: int, image_size: int) -> Tensor:
    """One image file as uint8 [channels, image_size, image_size]: shorter side resized, center crop."""
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_8bit(img, path).convert("L" if channels == 1 else "RGB")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e}): delete or replace it.") from e
    if img.size != (image_size, image_size):
        if min(img.size) != image_size:
            img = F.resize(img, image_size, antialias=True)
        img = F.center_crop(img, [image_size, image_size])
    pixels = np.array(img, dtype=np.uint8)  # [H, W] or [H, W, C]; faster than pil_to_tensor
    return torch.from_numpy(pixels.reshape(image_size, image_size, channels)).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Image files read lazily, one per item, so that large folders need not fit in memory."""

    def __init__(self, files: list[Path], labels: Tensor, channels: int, image_size: int) -> None:
        self.files = files
        self.labels = labels
        self.channels = channels
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(self.files[index], self.channels, self.image_size), int(self.labels[index])


class ImageFolderDataModule(ImageDataModule):
    """A folder of images (png, jpg, jpeg, bmp, webp, gif, tif, tiff; any case).

    Layouts: every image in a direct subfolder of ``root`` -> labels from the sorted subfolder
    names (as torchvision's ImageFolder) and ``num_classes`` discovered from them; every image
    directly in ``root`` -> unlabelled (y = -1, num_classes 0). A configured ``num_classes`` > 0
    must match the discovered classes. The files are split into train/val/test by the
    fractions. Small folders are decoded once into memory (``in_memory=None`` decides by
    size); large ones are read lazily, one file per item.
    """

    def __init__(
        self,
        *,
        name: str = "image_folder",
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 0,
        in_memory: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        """``in_memory``: decode every image once in setup (True), read lazily (False), or decide
        by size (None). The other arguments are ImageDataModule's."""
        super().__init__(name=name, channels=channels, image_size=image_size, num_classes=num_classes, **kwargs)
        self.in_memory = in_memory
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.classes: list[str] = []
        self._fingerprint = ""

    # ------------------------------------------------------------------ checks

    def _inspect(self) -> tuple[int, Optional[int]]:
        root = self.root
        if root is None:
            raise DataError("dataset.root is not set: set dataset.root=<folder of images>.")
        refuse_dangling_link(root)
        if not root.exists():
            raise DataError(f"dataset.root={root} does not exist: set dataset.root to a folder of images.")
        if not root.is_dir():
            raise DataError(f"dataset.root={root} is not a directory: set dataset.root to a folder of images.")
        files, labels, classes = self._scan(root)
        self._verify(files)
        if self.num_classes > 0 and self.num_classes != len(classes):
            found = (
                f"{len(classes)} class subfolders ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
                if classes
                else "no class subfolders (its images are unlabelled)"
            )
            raise DataError(
                f"dataset.num_classes={self.num_classes} but dataset.root={root} has {found}: set "
                f"dataset.num_classes={len(classes)}, or arrange the images in one subfolder per class."
            )
        self.files, self.labels, self.classes = files, labels, classes
        self.num_classes = len(classes)
        return len(files), None

    def _scan(self, root: Path) -> tuple[list[Path], list[int], list[str]]:
        flat: list[Path] = []
        by_class: dict[str, list[Path]] = {}
        for entry in _visible(root):
            if entry.is_dir():
                _refuse_link_back(entry, root)
                files = []
                for sub in _visible(entry.path):
                    if sub.is_dir():
                        _refuse_link_back(sub, root)
                        nested = _first_image(sub.path)
                        if nested is not None:
                            raise DataError(
                                f"{nested} is more than one folder below dataset.root={root}: images must "
                                f"sit directly in dataset.root (unlabelled) or directly in its subfolders "
                                f"(one per class). If {entry.path} holds the class folders, set "
                                f"dataset.root={entry.path}."
                            )
                    elif _is_image(sub.name):
                        files.append(Path(sub.path))
                if files:
                    by_class[entry.name] = files
            elif _is_image(entry.name):
                flat.append(Path(entry.path))
        if flat and by_class:
            raise DataError(
                f"dataset.root={root} mixes layouts: images directly in it (e.g. {flat[0].name}) and in "
                f"subfolders (e.g. {next(iter(by_class.values()))[0].relative_to(root)}). Put every image in "
                "a class subfolder (labelled) or all of them directly in the folder (unlabelled)."
            )
        if not flat and not by_class:
            raise DataError(
                f"dataset.root={root} is empty: no files with extensions {', '.join(IMAGE_EXTENSIONS)} "
                "in it or in its direct subfolders. Point dataset.root at a folder of images."
            )
        if flat:
            return flat, [-1] * len(flat), []
        classes = sorted(by_class)
        files = [f for c in classes for f in by_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in by_class[c]]
        return files, labels, classes

    def _verify(self, files: list[Path]) -> None:
        """Decode every file once with PIL (a truncated file fails here, not mid-training);
        fingerprint the folder."""
        digest = hashlib.sha256()
        for path in files:
            try:
                with Image.open(path) as img:
                    img.load()
                    _to_8bit(img, path)  # refuses pixel formats without a fixed range
            except DataError as e:
                raise DataError(f"{e} (dataset.root={self.root})") from None
            except Exception as e:
                raise DataError(
                    f"{path} is not a readable image ({type(e).__name__}: {e}): delete or replace it "
                    f"(dataset.root={self.root})."
                ) from e
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        self._fingerprint = digest.hexdigest()

    # ------------------------------------------------------------------ loading

    def _load(self) -> dict[str, Dataset]:
        labels = self._labels(torch.tensor(self.labels, dtype=torch.int64))
        indices = self._split_indices(len(self.files), with_test=True)
        in_memory = self.in_memory
        if in_memory is None:
            in_memory = len(self.files) * self.channels * self.image_size**2 <= IN_MEMORY_BYTES
        if in_memory:
            images = torch.stack([load_image(p, self.channels, self.image_size) for p in self.files])
            data = TensorImages(images, labels)
            return {split: data.subset(idx) for split, idx in indices.items()}
        files = ImageFiles(self.files, labels, self.channels, self.image_size)
        return {split: Subset(files, idx.tolist()) for split, idx in indices.items()}

    def identity(self) -> dict[str, Any]:
        self.check()
        return {
            **super().identity(),
            "labels": "subfolders" if self.classes else "none",
            "classes": list(self.classes),
            "files": len(self.files),
            "fingerprint": self._fingerprint,
        }
