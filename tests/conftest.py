"""Shared fixtures: composed configs, tiny datasets, offline W&B, a cache per session."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from genlab.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_cfg(config_name: str = "train", overrides: list[str] = (), output_dir: Path | None = None):
    """Compose a config the way the entry point does, with the run directory pinned."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
        return compose(config_name, overrides=[*overrides, *extra])


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """One FID cache for the whole session, shared by the xdist workers (the digits classifier
    is trained once; its cache writes are atomic)."""
    path = tmp_path_factory.getbasetemp().parent / "genlab-test-cache"
    path.mkdir(exist_ok=True)
    os.environ["GENLAB_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """The 10,000 real MNIST test images, laid out where torchvision's loader looks."""
    source = SHARED_DATA / "mnist"
    if not source.is_dir():
        pytest.skip(f"real MNIST files not present at {source}")
    root = tmp_path_factory.mktemp("mnist")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in source.glob("*.gz"):
        shutil.copy(f, root / "MNIST" / "raw" / f.name)
    return root


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> Path:
    """A 32x32 RGB image folder with 10 class subfolders: 50 real CIFAR-10 JPEGs per class."""
    archive = SHARED_DATA / "cifar10-jpg" / "test.tar.gz"
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not present at {archive}")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        per_class: dict[str, int] = {}
        keep = []
        for m in members:
            cls = Path(m.name).parent.name
            if per_class.get(cls, 0) < 50:
                per_class[cls] = per_class.get(cls, 0) + 1
                keep.append(m)
        tar.extractall(root, members=keep, filter="data")
    return next(p.parent.parent for p in root.rglob("*.jpg"))


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A generated image folder: 2 classes of 24 RGB 12x10 images (bars vs blobs)."""
    rng = np.random.default_rng(0)
    for cls in ("bars", "blobs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(24):
            img = rng.integers(0, 60, (10, 12, 3), dtype=np.uint8)
            if cls == "bars":
                img[:, ::3] = 230
            else:
                img[3:7, 4:8] = 250
            Image.fromarray(img).save(tmp_path / "imgs" / cls / f"{i}.png")
    return tmp_path / "imgs"


def pytest_configure(config):
    # Two xdist workers on a 2-core machine: one thread each, or they thrash (10-40x slower).
    # Child processes (CLI and DDP tests) inherit the variables.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = "1"
        torch.set_num_threads(1)


#: the files holding the longest tests (bench/RESULTS.md, "make test"): they start first
LONGEST_FIRST = ("test_resume.py", "test_quality.py", "test_cluster.py", "test_lock.py")


def pytest_collection_modifyitems(config, items):
    # The files with minute-long runs first, so that xdist's workers end on short tests together
    # instead of one waiting while the other finishes such a run. Each file stays whole and in
    # its own order: a module-scoped fixture is built once per worker, not once per half.
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)
