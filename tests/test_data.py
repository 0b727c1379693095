"""The dataset layer: the 8-bit batch contract, seeded splits and clear errors. CPU, offline."""

from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from genlab.data import DataError, DigitsDataModule, ImageFolderDataModule, TorchvisionDataModule

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONF_DATASET = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def image_set(dataset) -> set[bytes]:
    """A split's images as a set of their bytes (a stand-in for their identity)."""
    return {dataset[i][0].numpy().tobytes() for i in range(len(dataset))}


def examples(dataset) -> Counter:
    """A split as a multiset of (image bytes, label)."""
    return Counter((x.numpy().tobytes(), y) for x, y in (dataset[i] for i in range(len(dataset))))


# ------------------------------------------------------------------------ digits


def test_digits_batches_follow_the_8bit_contract() -> None:
    dm = DigitsDataModule(batch_size=32, eval_batch_size=100)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 1, 8, 8)
    assert y.dtype == torch.int64 and y.shape == (32,)
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (100, 1, 8, 8)
    assert dm.data_shape == (1, 8, 8) and dm.num_classes == 10
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [1437, 180, 180]


def test_digits_values_span_0_to_255() -> None:
    dm = DigitsDataModule()
    images = torch.cat([x for x, _ in dm.train_dataloader()])
    assert int(images.min()) == 0 and int(images.max()) == 255
    # sklearn's values are 0..16, so only round(v * 255 / 16) can occur
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(images.unique().tolist()) <= allowed


def test_digits_split_is_deterministic_disjoint_and_ignores_global_rng() -> None:
    torch.manual_seed(123)
    a = DigitsDataModule(seed=7)
    a.setup()
    torch.manual_seed(999)
    b = DigitsDataModule(seed=7)
    b.setup()
    c = DigitsDataModule(seed=8)
    c.setup()
    for split in ("train", "val", "test"):
        xa = torch.stack([a.split_dataset(split)[i][0] for i in range(len(a.split_dataset(split)))])
        xb = torch.stack([b.split_dataset(split)[i][0] for i in range(len(b.split_dataset(split)))])
        assert torch.equal(xa, xb)
    assert image_set(a.split_dataset("val")) != image_set(c.split_dataset("val"))
    # train/val/test partition the whole set: together they are exactly sklearn's 1,797 examples
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    truth = Counter((img.reshape(1, 8, 8).tobytes(), int(t)) for img, t in zip(pixels, digits.target))
    parts = [examples(a.split_dataset(s)) for s in ("train", "val", "test")]
    assert parts[0] + parts[1] + parts[2] == truth


def test_image_folder_splits_are_disjoint(tmp_path: Path) -> None:
    for i in range(40):
        write_image(tmp_path / f"{i}.png", (8, 8), "L", i)  # 40 different random images
    dm = ImageFolderDataModule(root=str(tmp_path), channels=1, image_size=8, val_fraction=0.25, test_fraction=0.25)
    train, val, test = (image_set(dm.split_dataset(s)) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (20, 10, 10)
    assert not (train & val) and not (train & test) and not (val & test)


def test_channel_and_size_conversion() -> None:
    dm = DigitsDataModule(channels=3, image_size=16)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_unlabelled_use_of_a_labelled_set_gives_minus_one() -> None:
    dm = DigitsDataModule(num_classes=0)
    _, y = next(iter(dm.train_dataloader()))
    assert (y == -1).all()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"val_fraction": -0.1}, "dataset.val_fraction"),
        ({"test_fraction": 1.5}, "dataset.test_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "dataset.val_fraction + dataset.test_fraction"),
        ({"val_fraction": 0.0001}, "dataset.val_fraction"),  # rounds to an empty val split
        ({"test_fraction": 0.0}, "dataset.test_fraction"),
        ({"channels": 2}, "dataset.channels"),
        ({"image_size": 2}, "dataset.image_size"),
        ({"num_classes": 7}, "dataset.num_classes"),
        ({"batch_size": 0}, "dataset.batch_size"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(DataError, match=key.replace("+", r"\+")):
        DigitsDataModule(**kwargs).check()


def test_check_is_cached() -> None:
    dm = DigitsDataModule()
    dm.check()
    dm.channels = 2  # would fail a fresh check: the second call must not redo the work
    dm.check()


def test_dataset_configs_instantiate() -> None:
    from hydra.utils import instantiate

    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "image_folder"):
        cfg = OmegaConf.load(CONF_DATASET / f"{name}.yaml")
        root = OmegaConf.create({"seed": 3, "paths": {"data_dir": "/nonexistent"}, "dataset": cfg})
        if name == "image_folder":
            assert OmegaConf.is_missing(root.dataset, "root")
            root.dataset.root = "/nonexistent"
        dm = instantiate(root.dataset)
        assert dm.name == name and dm.seed == 3
        assert dm.data_shape == (cfg.channels, cfg.image_size, cfg.image_size)


# ------------------------------------------------------------------------- MNIST


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    src = SHARED_DATA / "mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the shared MNIST test files are not at {src}")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return tmp_path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL torchvision opens fails at once (and is recorded)."""
    opened: list[str] = []

    def fail(request, *args, **kwargs):
        opened.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return opened


def test_mnist_test_pool_loads_offline_through_torchvision(mnist_root: Path, no_network: list[str]) -> None:
    dm = TorchvisionDataModule(name="mnist", root=str(mnist_root), pool="test", download=True, batch_size=50)
    dm.setup("fit")
    assert no_network == []
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [8000, 1000, 1000]
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (50, 1, 28, 28)
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    assert int(x.max()) == 255 and int(x.min()) == 0
    assert dm.identity()["pool"] == "test" and dm.identity()["root"] == str(mnist_root.resolve())
    # the same seed gives the same split, a fresh module reads the now extracted files
    again = TorchvisionDataModule(name="mnist", root=str(mnist_root), pool="test", download=False)
    assert torch.equal(again.split_dataset("val")[0][0], dm.split_dataset("val")[0][0])


def test_mnist_resized_to_rgb(mnist_root: Path) -> None:
    dm = TorchvisionDataModule(
        name="mnist", root=str(mnist_root), pool="test", download=False, channels=3, image_size=32
    )
    x, y = dm.split_dataset("test")[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and isinstance(y, int)


def test_mnist_official_pool_offline_names_missing_train_file_and_pool(mnist_root: Path) -> None:
    dm = TorchvisionDataModule(name="mnist", root=str(mnist_root), pool="official", download=False)
    with pytest.raises(DataError) as err:
        dm.check()
    message = str(err.value)
    assert str(mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    assert "dataset.pool=test" in message


def test_mnist_download_failure_is_a_clear_data_error(mnist_root: Path, no_network: list[str]) -> None:
    dm = TorchvisionDataModule(name="mnist", root=str(mnist_root), pool="official", download=True)
    with pytest.raises(DataError) as err:
        dm.check()
    message = str(err.value)
    assert no_network, "the download was attempted"
    assert f"dataset.root={mnist_root}" in message and "no network" in message
    assert "train-images-idx3-ubyte.gz" in message and "dataset.download=false" in message
    assert "dataset.pool=test" in message


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch):
    """A real HTTP server on localhost as MNIST's only mirror: ``files`` maps a file name to the
    bytes it serves; a name mapped to (bytes, n) announces all of them but sends the first n and
    hangs up; other names get 404. Never the internet, with or without a network."""
    import http.server
    import threading

    from torchvision.datasets import MNIST

    files: dict[str, object] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.rsplit("/", 1)[-1])
            if body is None:
                self.send_error(404)
                return
            data, sent = body if isinstance(body, tuple) else (body, len(body))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:sent])
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    yield files
    server.shutdown()
    server.server_close()


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in sorted(root.rglob("*"))}


def test_a_failed_download_leaves_nothing_it_created(tmp_path: Path, mirror: dict) -> None:
    # the server has neither file: torchvision gets 404s, after creating <root>/MNIST/raw/
    root = tmp_path / "data" / "new"
    dm = TorchvisionDataModule(name="mnist", root=str(root), pool="test", download=True)
    with pytest.raises(DataError, match="could not be downloaded"):
        dm.check()
    assert not (tmp_path / "data").exists()  # every folder the attempt made is gone again
    # what the user had stays, including an empty MNIST/ folder of their own
    (tmp_path / "mine" / "MNIST").mkdir(parents=True)
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    before = tree(tmp_path / "mine")
    with pytest.raises(DataError):
        TorchvisionDataModule(name="mnist", root=str(tmp_path / "mine"), pool="test", download=True).check()
    assert tree(tmp_path / "mine") == before


def test_a_silent_server_fails_the_download_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror that accepts the connection and never answers (a firewall that drops, a hung
    proxy): the download fails after DOWNLOAD_TIMEOUT_S, not never."""
    import socket
    import time

    from torchvision.datasets import MNIST

    import genlab.data.torchvision_sets as torchvision_sets

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshakes; nobody reads or answers
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{listener.getsockname()[1]}/"])
    monkeypatch.setattr(torchvision_sets, "DOWNLOAD_TIMEOUT_S", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match="could not be downloaded.*timed out"):
            TorchvisionDataModule(name="mnist", root=str(tmp_path / "data"), pool="test", download=True).check()
    finally:
        listener.close()
    assert time.monotonic() - start < 20
    assert not (tmp_path / "data").exists() and socket.getdefaulttimeout() is None


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST files not present")
def test_a_download_cut_short_keeps_the_complete_archive_and_removes_the_partial_one(tmp_path: Path,
                                                                                     mirror: dict) -> None:
    images = (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    labels = (SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    mirror["t10k-images-idx3-ubyte.gz"] = images
    mirror["t10k-labels-idx1-ubyte.gz"] = (labels, len(labels) // 2)  # the connection drops half way
    raw = tmp_path / "MNIST" / "raw"
    dm = TorchvisionDataModule(name="mnist", root=str(tmp_path), pool="test", download=True)
    with pytest.raises(DataError, match="could not be downloaded"):
        dm.check()
    # the complete archive stays (md5 checked, it need not be fetched again); nothing partial does
    assert (raw / "t10k-images-idx3-ubyte.gz").read_bytes() == images
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists() and not (raw / "t10k-labels-idx1-ubyte").exists()
    # once the mirror serves the whole file, the download completes from there
    mirror["t10k-labels-idx1-ubyte.gz"] = labels
    TorchvisionDataModule(name="mnist", root=str(tmp_path), pool="test", download=True).check()
    assert (raw / "t10k-labels-idx1-ubyte").is_file()


def test_fashion_mnist_missing_without_download(tmp_path: Path) -> None:
    dm = TorchvisionDataModule(name="fashion_mnist", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=str(tmp_path / "FashionMNIST" / "raw")):
        dm.check()


def test_cifar10_download_failure(tmp_path: Path, no_network: list[str]) -> None:
    dm = TorchvisionDataModule(name="cifar10", root=str(tmp_path), download=True)
    with pytest.raises(DataError, match="dataset.root") as err:
        dm.check()
    assert no_network and "cifar-10-python.tar.gz" in str(err.value)


def test_unknown_torchvision_name_and_pool() -> None:
    with pytest.raises(DataError, match="dataset.name"):
        TorchvisionDataModule(name="svhn", root="/tmp").check()
    with pytest.raises(DataError, match="dataset.pool"):
        TorchvisionDataModule(name="mnist", root="/tmp", pool="all").check()


# ------------------------------------------------------------------ image folder


def write_image(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """cat/: 6 grey 20x12 images, dog/: 4 RGB 10x10 images, plus a non-image file."""
    root = tmp_path / "pets"
    for i in range(6):
        write_image(root / "cat" / f"{i}.PNG", (20, 12), "L", i)
    for i in range(4):
        write_image(root / "dog" / f"{i}.png", (10, 10), "RGB", 10 + i)
    (root / "README.txt").write_text("not an image")
    return root


def test_image_folder_labels_from_subfolders(class_folder: Path) -> None:
    dm = ImageFolderDataModule(root=str(class_folder), channels=3, image_size=8, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.num_classes == 2 and dm.classes == ["cat", "dog"]
    items = [dm.split_dataset(s)[i] for s in ("train", "val", "test") for i in range(len(dm.split_dataset(s)))]
    assert len(items) == 10
    assert sorted(y for _, y in items) == [0] * 6 + [1] * 4
    for x, y in items:
        assert x.shape == (3, 8, 8) and x.dtype == torch.uint8
        if y == 0:  # grey source converted to RGB: equal channels
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 8, 8) and y.dtype == torch.int64
    assert dm.identity()["labels"] == "subfolders"


def test_image_folder_center_crops_non_square(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    rng = np.random.default_rng(0)
    # 12 rows x 20 columns: the middle 12 columns are the center crop, at the native size
    pixels = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    root.mkdir()
    for i in range(10):
        Image.fromarray(pixels, "L").save(root / f"{i}.png")
    dm = ImageFolderDataModule(root=str(root), channels=1, image_size=12, val_fraction=0.2, test_fraction=0.2)
    for lazy in (False, True):
        dm.in_memory = not lazy
        dm._splits = None
        x, y = dm.split_dataset("train")[0]
        assert x.shape == (1, 12, 12) and y == -1
        assert torch.equal(x[0], torch.from_numpy(pixels[:, 4:16]))


def test_image_folder_flat_is_unlabelled(tmp_path: Path) -> None:
    for i in range(10):
        write_image(tmp_path / f"img{i}.jpg", (16, 16), "RGB", i)
    dm = ImageFolderDataModule(root=str(tmp_path), channels=1, image_size=16, val_fraction=0.2, test_fraction=0.2)
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 0 and (y == -1).all()
    assert x.shape == (6, 1, 16, 16) and x.dtype == torch.uint8


def test_image_folder_num_classes_mismatch(class_folder: Path) -> None:
    with pytest.raises(DataError, match="dataset.num_classes=3.*2 class subfolders"):
        ImageFolderDataModule(root=str(class_folder), num_classes=3, val_fraction=0.2, test_fraction=0.2).check()
    ok = ImageFolderDataModule(root=str(class_folder), num_classes=2, val_fraction=0.2, test_fraction=0.2)
    ok.check()
    assert ok.num_classes == 2


def test_image_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="is empty: no files with extensions"):
        ImageFolderDataModule(root=str(tmp_path)).check()


def test_image_folder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        ImageFolderDataModule(root=str(missing)).check()
    assert "dataset.root" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(DataError, match="dataset.root is not set"):
        ImageFolderDataModule(root=None).check()
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        ImageFolderDataModule(root=str(tmp_path / "file.png")).check()


def test_image_folder_corrupt_file_is_named(class_folder: Path) -> None:
    bad = class_folder / "dog" / "bad.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        ImageFolderDataModule(root=str(class_folder), val_fraction=0.2, test_fraction=0.2).check()
    assert str(bad) in str(err.value)


def test_image_folder_mixed_and_nested_layouts(class_folder: Path) -> None:
    write_image(class_folder / "stray.png", (8, 8), "L", 0)
    with pytest.raises(DataError, match="mixes layouts"):
        ImageFolderDataModule(root=str(class_folder)).check()
    (class_folder / "stray.png").unlink()
    with pytest.raises(DataError, match=f"dataset.root={class_folder}"):
        ImageFolderDataModule(root=str(class_folder.parent)).check()  # images two levels down


def test_image_folder_too_small_for_the_fractions(class_folder: Path) -> None:
    with pytest.raises(DataError, match="dataset.val_fraction"):
        ImageFolderDataModule(root=str(class_folder), val_fraction=0.01).check()


def test_cifar_jpeg_folder(tmp_path: Path) -> None:
    archive = SHARED_DATA / "cifar10-jpg" / "test.tar.gz"
    if not archive.exists():
        pytest.skip(f"the shared CIFAR-10 JPEG archive is not at {archive}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    dm = ImageFolderDataModule(root=str(tmp_path / "test"), channels=3, image_size=32, in_memory=False)
    dm.check()
    assert dm.num_classes == 10 and dm.classes[0] == "airplane"
    assert [len(dm.split_dataset(s)) for s in ("train", "val", "test")] == [8000, 1000, 1000]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 1
    assert dm.identity()["files"] == 10000


def test_cifar10_test_pool_reads_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CIFAR-10 path through torchvision's loader, on small fake batch files.

    torchvision checks the official md5 of each file, which fake files cannot match: only that
    check is replaced (by existence), the reading is torchvision's own.
    """
    import os
    import pickle

    import torchvision.datasets.cifar as cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (50, 3 * 32 * 32), dtype=np.uint8)
    labels = [i % 10 for i in range(50)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.exists(path))

    dm = TorchvisionDataModule(
        name="cifar10", root=str(tmp_path), pool="test", download=False, val_fraction=0.2, test_fraction=0.2
    )
    dm.setup()
    ds = dm.split_dataset("train")
    assert len(ds) == 30
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    # the image is the CHW reshape of its row in the batch file, with its label
    row = next(i for i in range(50) if np.array_equal(data[i], x.numpy().reshape(-1)))
    assert labels[row] == y


def test_mnist_corrupt_archive_is_named(mnist_root: Path) -> None:
    archive = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(b"not gzip")
    dm = TorchvisionDataModule(name="mnist", root=str(mnist_root), pool="test", download=False)
    with pytest.raises(DataError, match=f"{archive} is corrupt"):
        dm.check()
