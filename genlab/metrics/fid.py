"""FID on torch-fidelity: feature extractors and reference statistics cached on disk.

Two extractors:

- ``inception``: torch-fidelity's standard ``inception-v3-compat`` (pool features, 2048-d).
  Its weights come from a local file (``callbacks.fid.weights_path``) or are downloaded once
  into torch hub's cache.
- ``classifier``: a small CNN that genlab trains once on the datamodule's labelled train split
  and caches under ``<cache_dir>/fid/``. It needs no download, so FID works offline. It is
  registered with torch-fidelity as ``genlab-classifier``, so torch-fidelity's own
  ``calculate_metrics`` can use it too.

Numbers from different extractors are not comparable, so metric names carry the extractor's
name (``val/fid_inception``, ``val/fid_classifier``) and cache keys carry its exact identity.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch_fidelity
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.helpers import vassert
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from genlab.errors import ConfigError, DataError
from genlab.modalities import modality_class
from genlab.metrics.distributed import is_distributed, map_chunks, rank_and_world
from genlab.utils import atomic_file, atomic_write_json, seeded

log = logging.getLogger(__name__)

EXTRACTORS = ("classifier", "inception")
CLASSIFIER_FIDELITY_NAME = "genlab-classifier"
INCEPTION_FIDELITY_NAME = "inception-v3-compat"

#: how the classifier is trained; part of its cache key
CLASSIFIER_RECIPE = {"steps": 600, "batch_size": 64, "lr": 2e-3, "seed": 0, "version": 1}
#: below this held-out accuracy the classifier's features say little about the images
MIN_CLASSIFIER_ACCURACY = 0.5

_FIX_OFFLINE = (
    "download torch-fidelity's InceptionV3 weights ({url}) on a machine with internet and set "
    "callbacks.fid.weights_path=/path/to/{file}, or use callbacks.fid.extractor=classifier "
    "(a classifier genlab trains itself, no download)"
).format(url=URL_INCEPTION_V3, file=os.path.basename(URL_INCEPTION_V3))

DeviceLike = Union[str, torch.device]


# --------------------------------------------------------------------------- the classifier


class ClassifierFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity feature extractor over a classifier file that genlab wrote.

    Input: uint8 data [B, *data_shape] of the dataset's shape. Features:
    ``features`` (the penultimate layer, used for FID and KID) and ``logits``.
    """

    def __init__(
        self,
        name: str,
        features_list: Sequence[str],
        feature_extractor_weights_path: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, list(features_list))
        vassert(
            feature_extractor_weights_path is not None,
            f"{name} needs feature_extractor_weights_path: a classifier file written by genlab",
        )
        ckpt = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        arch = ckpt["arch"]
        # a fixed table of modalities, so the file cannot choose other code ("image" before issue 12)
        self.net = modality_class(ckpt.get("modality", "image")).classifier_net(**arch)
        self.net.load_state_dict(ckpt["state_dict"])
        legacy_shape = (arch.get("channels"), arch.get("image_size"), arch.get("image_size"))
        self.input_shape = tuple(ckpt.get("data_shape", legacy_shape))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits"}.get(metric, "features")

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting uint8 data")
        vassert(
            tuple(x.shape[1:]) == self.input_shape,
            f"the classifier was trained on data of shape {self.input_shape}, "
            f"got {tuple(x.shape[1:])}",
        )
        features, logits = self.net(x)
        out = {"features": features, "logits": logits}
        return tuple(out[name].float() for name in self.features_list)


if CLASSIFIER_FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(CLASSIFIER_FIDELITY_NAME, ClassifierFeatureExtractor)


def _sha1(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _classifier_arch(datamodule: Any) -> dict[str, int]:
    return datamodule.modality.classifier_arch(int(datamodule.num_classes))


# The classifier is trained on the split of this seed, whatever the run's seed: runs that differ
# only in their seed must measure FID with the same extractor to be comparable.
CLASSIFIER_DATA_SEED = 0


def classifier_path(datamodule: Any, cache_dir: Union[str, os.PathLike]) -> Path:
    """Where the classifier for this datamodule lives: keyed by everything that changes it."""
    dataset = {**datamodule.identity(), "seed": CLASSIFIER_DATA_SEED}
    key = {"dataset": dataset, "arch": _classifier_arch(datamodule), "recipe": CLASSIFIER_RECIPE}
    return Path(cache_dir).expanduser() / "fid" / f"classifier-{_sha1(key)[:16]}.pt"


def train_classifier(datamodule: Any, path: Path, device: DeviceLike = "cpu") -> float:
    """Train the FID classifier on the labelled train split, write it atomically to ``path``
    and return its accuracy on the val split. Deterministic given ``CLASSIFIER_RECIPE``."""
    device = torch.device(device)
    recipe = CLASSIFIER_RECIPE
    start = time.perf_counter()
    train = datamodule.split_dataset("train")
    if len(train) == 0:
        raise DataError(f"the FID classifier needs training images; '{datamodule.name}' has none")
    with seeded(recipe["seed"]):
        net = datamodule.modality.classifier_net(**_classifier_arch(datamodule)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
    loader = DataLoader(
        train, batch_size=recipe["batch_size"], shuffle=True, generator=torch.Generator().manual_seed(recipe["seed"])
    )
    net.train()
    epochs = (batch for _ in itertools.count() for batch in loader)
    for x, y in itertools.islice(epochs, recipe["steps"]):
        _, logits = net(x.to(device))
        loss = nn.functional.cross_entropy(logits, torch.as_tensor(y).long().to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(datamodule.split_dataset("val"), batch_size=512):
            _, logits = net(x.to(device))
            correct += int((logits.argmax(1).cpu() == torch.as_tensor(y)).sum())
            total += len(x)
    accuracy = correct / max(total, 1)

    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    ckpt = {
        "arch": _classifier_arch(datamodule), "modality": datamodule.modality.name,
        "data_shape": list(datamodule.data_shape), "state_dict": state_dict, "val_accuracy": accuracy,
    }  # fmt: skip
    with atomic_file(path, "wb") as file:
        torch.save(ckpt, file)
    log.info(
        "trained the FID classifier for %s in %.1fs: val accuracy %.3f, saved to %s",
        datamodule.name, time.perf_counter() - start, accuracy, path,
    )  # fmt: skip
    return accuracy


def ensure_classifier(
    datamodule: Any, cache_dir: Union[str, os.PathLike], device: DeviceLike = "cpu"
) -> Path:
    """Path of the cached classifier for this datamodule, training it first if there is none.

    Under DDP rank 0 trains and the others wait, so that every rank uses the same weights.
    """
    path = classifier_path(datamodule, cache_dir)
    if datamodule.seed != CLASSIFIER_DATA_SEED:
        datamodule = datamodule.with_seed(CLASSIFIER_DATA_SEED)
    if rank_and_world()[0] == 0 and not path.is_file():
        train_classifier(datamodule, path, device)
    if is_distributed():
        dist.barrier()
        if not path.is_file():  # cache_dir is not shared between this node and rank 0's
            train_classifier(datamodule, path, device)
    accuracy = torch.load(path, map_location="cpu", weights_only=True)["val_accuracy"]
    log.info("FID classifier %s: val accuracy %.3f", path, accuracy)
    if accuracy < MIN_CLASSIFIER_ACCURACY:
        log.warning(
            "the FID classifier for %s reaches only %.3f val accuracy: FID measured with its "
            "features says little. Consider callbacks.fid.extractor=inception.",
            datamodule.name, accuracy,
        )  # fmt: skip
    return path


# --------------------------------------------------------------------------- inception weights


def inception_weights(weights_path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """A local file with torch-fidelity's InceptionV3 weights: ``weights_path`` when given,
    else torch hub's cached copy, downloading it first if needed (ConfigError if that fails)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"callbacks.fid.weights_path={weights_path}: no such file ({path.resolve()}). "
                f"Fix: {_FIX_OFFLINE}."
            )
        return _plain_weights(path, weights_path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)
    if path.is_file():
        return path
    log.info("downloading InceptionV3 weights for FID from %s to %s", URL_INCEPTION_V3, path)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an unreachable network must fail, not hang
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        raise ConfigError(
            f"callbacks.fid.extractor=inception needs InceptionV3 weights, but "
            f"callbacks.fid.weights_path is not set, they are not cached at {path} and "
            f"downloading them failed ({e}). Fix: {_FIX_OFFLINE}."
        ) from e
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return path


def _plain_weights(path: Path, weights_path: Union[str, os.PathLike]) -> Path:
    """``path`` if it holds tensors only. torch-fidelity loads the file with ``weights_only=False``,
    which unpickles anything (pickle can run code), and ``weights_path`` may come from a stored
    config (genlab-eval takes it from the checkpoint's run): load it as data first."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a file it refuses
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return path
        why = f"it holds a {type(state).__name__}, not a dict of tensors"
    raise ConfigError(
        f"callbacks.fid.weights_path={weights_path}: {path} is not a plain file of InceptionV3 weights "
        f"({why}); genlab loads weights files as data only, never code. Fix: {_FIX_OFFLINE}."
    )


# --------------------------------------------------------------------------- extractors


class FeatureExtractor:
    """A torch-fidelity extractor with what genlab needs around it.

    ``name`` is short and goes into metric names; ``key`` identifies the extractor exactly (it
    includes a hash of the weights file) and goes into cache keys. The module's first requested
    layer gives the FID features, a second one (if any) the Inception Score's logits.
    ``extract`` maps uint8 images to float64 features on the CPU, in batches, on ``device``.
    """

    def __init__(
        self,
        name: str,
        key: str,
        module: torch_fidelity.FeatureExtractorBase,
        device: DeviceLike = "cpu",
        batch_size: int = 256,
        grey_to_rgb: bool = False,
    ) -> None:
        self.name = name
        self.key = key
        self.fid_layer, *rest = module.get_requested_features_list()
        self.isc_layer: Optional[str] = rest[0] if rest else None
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.batch_size = batch_size
        self.grey_to_rgb = grey_to_rgb

    @torch.no_grad()
    def extract(self, x: Tensor) -> dict[str, Tensor]:
        """uint8 data [B, *data_shape] -> {layer: float64 features [B, D]} (CPU)."""
        if x.dtype != torch.uint8 or x.dim() < 2:
            raise ValueError(f"expected uint8 data [B, *data_shape], got {x.dtype} {tuple(x.shape)}")
        parts: list[tuple[Tensor, ...]] = []
        # the extractor always runs in float32, even inside a mixed-precision Trainer
        with torch.autocast(self.device.type, enabled=False):
            for batch in x.split(self.batch_size):
                batch = batch.to(self.device)
                if self.grey_to_rgb and batch.shape[1] == 1:
                    batch = batch.expand(-1, 3, -1, -1)
                parts.append(tuple(t.double().cpu() for t in self.module(batch)))
        layers = self.module.get_requested_features_list()
        return {layer: torch.cat([p[i] for p in parts]) for i, layer in enumerate(layers)}

    def features(self, x: Tensor) -> Tensor:
        """The FID features of uint8 data [B, *data_shape]: float64 [B, D] on the CPU."""
        return self.extract(x)[self.fid_layer]


def check_extractor(
    extractor: str,
    datamodule: Any,
    weights_path: Optional[Union[str, os.PathLike]] = None,
    isc: bool = False,
) -> None:
    """Raise ConfigError now, before any training, if this extractor cannot work here. For
    inception without ``weights_path`` this downloads the weights if they are not cached."""
    if extractor not in EXTRACTORS:
        raise ConfigError(
            f"callbacks.fid.extractor={extractor} is unknown; choose one of {list(EXTRACTORS)}."
        )
    fits = datamodule.modality.extractors
    if extractor not in fits:
        raise ConfigError(
            f"callbacks.fid.extractor={extractor} cannot measure the {datamodule.modality.name} data of dataset "
            f"'{datamodule.name}'; use callbacks.fid.extractor={fits[0]} (or callbacks.fid=null)."
        )
    if extractor == "classifier":
        if int(datamodule.num_classes) <= 0:
            raise ConfigError(
                f"callbacks.fid.extractor=classifier trains a classifier on the dataset's labels, but "
                f"dataset '{datamodule.name}' is unlabelled (num_classes=0). Use callbacks.fid.extractor="
                f"inception (with callbacks.fid.weights_path for offline machines)."
            )
        if isc:
            raise ConfigError(
                "callbacks.fid.isc=true: the Inception Score needs Inception's logits. "
                "Use callbacks.fid.extractor=inception or callbacks.fid.isc=false."
            )
    else:
        if int(datamodule.data_shape[0]) not in (1, 3):
            raise ConfigError(
                f"callbacks.fid.extractor=inception takes grey or RGB images, dataset "
                f"'{datamodule.name}' has {datamodule.data_shape[0]} channels."
            )
        inception_weights(weights_path)


def build_feature_extractor(
    extractor: str,
    datamodule: Any,
    cache_dir: Union[str, os.PathLike],
    weights_path: Optional[Union[str, os.PathLike]] = None,
    device: DeviceLike = "cpu",
    isc: bool = False,
) -> FeatureExtractor:
    """The ``classifier`` (trained and cached on first use) or ``inception`` feature extractor
    for this datamodule. ``isc`` also extracts the logits the Inception Score needs."""
    check_extractor(extractor, datamodule, weights_path, isc)
    if extractor == "classifier":
        path = ensure_classifier(datamodule, cache_dir, device)
        fidelity_name, layers, batch_size = CLASSIFIER_FIDELITY_NAME, ["features"], 512
    else:
        path = inception_weights(weights_path)
        fidelity_name, layers, batch_size = INCEPTION_FIDELITY_NAME, ["2048"], 64
        if isc:
            layers.append("logits_unbiased")
    module = create_feature_extractor(
        fidelity_name, layers, cuda=False, feature_extractor_weights_path=str(path), verbose=False
    )
    with open(path, "rb") as f:
        weights_sha1 = hashlib.file_digest(f, "sha1").hexdigest()
    key = f"{fidelity_name}/{layers[0]}/{weights_sha1[:16]}"
    return FeatureExtractor(extractor, key, module, device, batch_size, grey_to_rgb=extractor == "inception")


# --------------------------------------------------------------------------- statistics


def statistics(features: Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance of features [N, D], as torch-fidelity computes them: from float32
    features (a lossless cast, extractors compute in float32), so that FID matches to round-off."""
    return fid_features_to_statistics(features.detach().cpu().float())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def kernel_distance(features_1: Tensor, features_2: Tensor, seed: int = 2020) -> float:
    """KID (mean over 100 subsets of up to 1000 samples, torch-fidelity's defaults)."""
    subset = min(1000, len(features_1), len(features_2))
    out = kid_features_to_metric(
        features_1.double(), features_2.double(), kid_subset_size=subset, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN])


def inception_score(logits: Tensor, seed: int = 2020) -> float:
    """IS over 10 splits (torch-fidelity's default; fewer when there are fewer than 10 samples)."""
    splits = min(10, len(logits))
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN])


def _all_ranks(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (so that all ranks take the same branch)."""
    if not is_distributed():
        return flag
    flags: list = [None] * dist.get_world_size()
    dist.all_gather_object(flags, flag)
    return all(flags)


def _load_reference(path: Path, key_json: str, keep_features: bool) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["key"]) != key_json or (keep_features and "features" not in data):
                return None
            return {name: data[name] for name in data.files if name != "key"}
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable FID reference cache %s (%s)", path, e)
        return None


def _save_reference(path: Path, key: dict, key_json: str, arrays: dict[str, np.ndarray]) -> None:
    with atomic_file(path, "wb") as f:
        np.savez(f, key=np.array(key_json), **arrays)
    atomic_write_json(path.with_suffix(".json"), key)  # for people browsing the cache


def reference_statistics(
    extractor: FeatureExtractor,
    datamodule: Any,
    split: str,
    n: int,
    cache_dir: Union[str, os.PathLike],
    chunk: int = 250,
    keep_features: bool = False,
) -> dict[str, Any]:
    """FID statistics of the first ``n`` images of a split (all of them if it has fewer).

    Cached in ``<cache_dir>/fid/ref-<sha1 of the key>.npz``, keyed by the dataset's identity,
    the split, the data's shape, the extractor's exact key and the number of images. Returns
    ``mu`` and ``sigma`` (see ``statistics``), ``n`` (images used), ``path``, ``hit`` (whether
    the cache was used) and, with ``keep_features``, the ``features`` themselves (for KID).
    """
    dataset = datamodule.split_dataset(split)
    n_used = min(int(n), len(dataset))
    if n_used < 2:
        raise DataError(
            f"FID reference statistics need at least 2 images; the {split} split of "
            f"'{datamodule.name}' has {len(dataset)}"
        )
    if n_used < n:
        log.info("FID reference: the %s split has %d images (< %d): using all", split, n_used, n)
    key = {
        "dataset": datamodule.identity(),
        "split": split,
        "data_shape": [int(s) for s in datamodule.data_shape],
        "extractor": extractor.key,
        "n": n_used,
    }
    key_json = json.dumps(key, sort_keys=True)
    path = Path(cache_dir).expanduser() / "fid" / f"ref-{_sha1(key)}.npz"

    cached = _load_reference(path, key_json, keep_features)
    if _all_ranks(cached is not None):
        log.info("FID reference for %s/%s (n=%d): cache hit %s", datamodule.name, split, n_used, path)
        return {**cached, "n": n_used, "path": path, "hit": True}

    start = time.perf_counter()

    def chunk_features(lo: int, hi: int) -> Tensor:
        images = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(lo, hi)])
        return extractor.features(images)

    features = map_chunks(n_used, chunk, 0, chunk_features)
    arrays = statistics(features)
    if keep_features:
        arrays["features"] = features.float().numpy()  # lossless: extractors compute in float32
    if rank_and_world()[0] == 0:
        _save_reference(path, key, key_json, arrays)
    log.info(
        "FID reference for %s/%s (n=%d, %s): cache miss, computed in %.1fs, wrote %s",
        datamodule.name, split, n_used, extractor.key, time.perf_counter() - start, path,
    )  # fmt: skip
    return {**arrays, "n": n_used, "path": path, "hit": False}
