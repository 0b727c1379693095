"""FID, precision and recall (optionally KID and IS) of a model's samples against a data split,
as a Lightning callback.

Every rank samples and extracts features for its share of fixed, seeded chunks
(``genlab.metrics.distributed.map_chunks``); all features are gathered on every rank, so every
rank computes the same value, and a 2-process run gives the same number as a 1-process run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError, GenlabError
from genlab.metrics.distributed import map_chunks
from genlab.metrics.fid import (
    EXTRACTORS,
    FeatureExtractor,
    build_feature_extractor,
    check_extractor,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
    reference_statistics,
    statistics,
)
from genlab.samplers.base import Sampler

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    return os.environ.get("GENLAB_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "genlab"))


class FIDCallback(pl.Callback):
    """Logs ``val/fid_<extractor>`` after validation epochs and ``test/fid_<extractor>`` after
    testing, with ``precision_<extractor>`` and ``recall_<extractor>`` (``prc``; improved
    precision and recall, Kynkaanniemi et al., 2019, on the same features), and ``kid_<extractor>``
    and ``isc_<extractor>`` when asked. Measured with genlab's classifier, where the sampler says
    which class each sample is meant to be of (``Sampler.labelled``: the label asked of a
    conditional model, the label of the clip a vocoder re-synthesises), also
    ``class_acc_classifier``: the share of samples the classifier assigns to that class. The data's modality chooses which extractors fit (``callbacks.fid.extractor``).

    ``num_samples`` generated samples are compared with the first ``num_samples`` items of the
    reference split: ``split`` when set (e.g. ``train``, the StyleGAN / StudioGAN convention, for
    every stage), else the stage's own split; a stage split smaller than ``num_samples`` (digits'
    180 validation images) is replaced by the whole train split, since a small reference raises the
    noise floor (reference statistics cached under ``cache_dir``). Beside each FID it logs the
    reference size (``<split>/fid_<extractor>_ref_size``) and the noise floor measured the same way
    (``<split>/fid_<extractor>_floor``): the FID of real held-out items (the stage's split when the
    reference is another split, else the train split, or val for train) against the same
    reference, at the same N. Differences below the floor mean nothing. The model's sampler is
    ``pl_module.sampler`` and the data is ``trainer.datamodule``.
    """

    def __init__(
        self,
        extractor: str = "classifier",
        num_samples: int = 1000,
        weights_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        every_n_epochs: int = 1,
        chunk_size: int = 250,
        seed: int = 1234,
        kid: bool = False,
        isc: bool = False,
        prc: bool = True,
        split: Optional[str] = None,
    ) -> None:
        super().__init__()
        if extractor not in EXTRACTORS:
            raise ConfigError(
                f"callbacks.fid.extractor={extractor} is unknown; choose one of {list(EXTRACTORS)}."
            )
        require_positive("callbacks.fid", every_n_epochs=every_n_epochs, chunk_size=chunk_size)
        if split not in (None, "train", "val", "test"):
            raise ConfigError(
                f"callbacks.fid.split={split!r}: use train, val, test or null (each stage's own split)."
            )
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
            raise ConfigError(f"callbacks.fid.num_samples={num_samples!r} must be an integer >= 2 (a covariance).")
        self.extractor_name = extractor
        self.num_samples = int(num_samples)
        self.weights_path = weights_path
        self.cache_dir = cache_dir or default_cache_dir()
        self.every_n_epochs = int(every_n_epochs)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.kid = kid
        self.isc = isc
        self.prc = prc
        self.split = split or None
        self.extractor: Optional[FeatureExtractor] = None
        #: the last values computed, e.g. {"val/fid_classifier": 12.3}
        self.last_metrics: dict[str, float] = {}

    def check(self, datamodule: Any) -> None:
        """Raise ConfigError now if FID cannot work with this datamodule (call before training).
        For inception without ``weights_path`` this fetches the weights if they are not cached."""
        check_extractor(self.extractor_name, datamodule, self.weights_path, self.isc)

    def metric_names(self, model: Any) -> list[str]:
        """The validation metrics this callback logs (for checking ``objective`` up front)."""
        kinds = ["fid"] + ["precision", "recall"] * self.prc + ["kid"] * self.kid + ["isc"] * self.isc
        sampler = getattr(model, "sampler", None)
        labelled = sampler.labelled(model) if sampler is not None else bool(getattr(model, "conditional", False))
        kinds += ["class_acc"] * (self.extractor_name == "classifier" and labelled)
        return [f"val/{kind}_{self.extractor_name}" for kind in kinds]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = self._datamodule(trainer)
        self._sampler(pl_module)  # fail before training, not after the first epoch
        device = trainer.strategy.root_device
        if self.extractor is None or self.extractor.device != device:
            self._build(datamodule, device)

    def _build(self, datamodule: Any, device: torch.device) -> None:
        self.extractor = build_feature_extractor(
            self.extractor_name, datamodule, self.cache_dir, self.weights_path, device, self.isc
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        values = self.compute(pl_module, self._sampler(pl_module), self._datamodule(trainer), split)
        for name, value in values.items():
            # every rank holds the same value (all features are gathered), so no sync is needed
            pl_module.log(name, value, prog_bar=True, rank_zero_only=False, sync_dist=False)

    def compute(self, model: Any, sampler: Sampler, datamodule: Any, split: str) -> dict[str, float]:
        """Sample ``num_samples`` images and measure them against ``split`` (or the callback's
        ``split`` when set); returns e.g. ``{"val/fid_classifier": 12.3}`` (named after the
        stage ``split``). Runs on every rank (collective under DDP)."""
        if self.extractor is None:
            self._build(datamodule, model.device)
        extractor = self.extractor
        start = time.perf_counter()
        ref_split, ref_n = self.split or split, self.num_samples
        if self.split is None and len(datamodule.split_dataset(split)) < self.num_samples:
            ref_split = "train"  # all of it: the larger the reference, the lower the floor
            ref_n = max(ref_n, len(datamodule.split_dataset("train")))
        reference = reference_statistics(
            extractor, datamodule, ref_split, ref_n, self.cache_dir, self.chunk_size, self.kid or self.prc
        )
        held_out = split if ref_split != split else ("train" if split != "train" else "val")
        floor_ref = reference_statistics(
            extractor, datamodule, held_out, self.num_samples, self.cache_dir, self.chunk_size
        )
        shape = tuple(int(s) for s in datamodule.data_shape)
        conditional = model.conditional
        labelled = bool(extractor.class_layer) and sampler.labelled(model)

        def sample_features(lo: int, hi: int) -> Tensor:
            # labels depend only on the positions, so they do not depend on the number of ranks
            labels = None
            if conditional:
                labels = torch.arange(lo, hi, device=model.device) % model.num_classes
            images, targets = sampler.sample_series(model, lo, hi, labels=labels)
            if images.dtype != torch.uint8 or tuple(images.shape) != (hi - lo, *shape):
                raise GenlabError(
                    f"{type(sampler).__name__} returned {images.dtype} {tuple(images.shape)}; FID "
                    f"needs uint8 data of shape {(hi - lo, *shape)} (the dataset's)."
                )
            features = list(extractor.extract(images).values())  # FID layer, then IS or classes
            if labelled:  # the class each sample is meant to be of, as a last column
                features.append(targets.to(features[0])[:, None])
            return torch.cat(features, dim=1)

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                gathered = map_chunks(self.num_samples, self.chunk_size, self.seed, sample_features)
        finally:
            model.train(was_training)

        fid_dim = reference["mu"].shape[0]
        if labelled:
            gathered, targets = gathered[:, :-1], gathered[:, -1].long()
        features = gathered[:, :fid_dim]
        name = extractor.name
        values = {
            f"{split}/fid_{name}": frechet_distance(statistics(features), reference),
            f"{split}/fid_{name}_floor": frechet_distance(floor_ref, reference),
            f"{split}/fid_{name}_ref_size": float(reference["n"]),
        }
        if self.prc:  # on sets of one size, as Kynkaanniemi et al. use them: k-NN radii depend on the size
            real = torch.from_numpy(reference["features"])
            n = min(len(features), len(real))
            precision, recall = precision_recall(features[:n], real[:n])
            values.update({f"{split}/precision_{name}": precision, f"{split}/recall_{name}": recall})
        if self.kid:
            ref_features = torch.from_numpy(reference["features"])
            values[f"{split}/kid_{name}"] = kernel_distance(features, ref_features, self.seed)
        if extractor.isc_layer:
            values[f"{split}/isc_{name}"] = inception_score(gathered[:, fid_dim:], self.seed)
        if labelled:  # the share the classifier assigns to the class asked of (or meant by) each sample
            values[f"{split}/class_acc_{name}"] = float((gathered[:, fid_dim:].argmax(1) == targets).double().mean())
        log.info(
            "%s (%d samples vs %d %s images, %s; noise floor: %d real %s images score %.4f) in %.1fs",
            ", ".join(f"{k}={v:.4f}" for k, v in values.items()), self.num_samples, reference["n"], ref_split,
            extractor.key, floor_ref["n"], held_out, values[f"{split}/fid_{name}_floor"], time.perf_counter() - start,
        )  # fmt: skip
        self.last_metrics = values
        return values

    @staticmethod
    def _sampler(pl_module: pl.LightningModule) -> Sampler:
        sampler = getattr(pl_module, "sampler", None)
        if not isinstance(sampler, Sampler):
            raise ConfigError(
                f"FIDCallback needs the model's sampler, a genlab Sampler: {type(pl_module).__name__}"
                f".sampler is {type(sampler).__name__} (genlab.train sets it from the `sampler` config group)."
            )
        return sampler

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise ConfigError("FIDCallback needs a datamodule: pass one to the Trainer (datamodule=)")
        return datamodule
