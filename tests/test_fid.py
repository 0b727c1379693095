"""FID: torch-fidelity agreement, reference cache, the offline classifier, early config errors
and the callback in a real Trainer. CPU only, no downloads."""

from __future__ import annotations

import hashlib
import urllib.error

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch_fidelity
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset, TensorDataset

from genlab.callbacks.fid import FIDCallback
from genlab.errors import ConfigError
from genlab.metrics import fid
from genlab.modalities.image import ImageModality
from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler
from genlab.utils import seeded


class Digits(pl.LightningDataModule):
    """Stand-in for genlab's digits datamodule: sklearn's 8x8 digits as uint8 0..255."""

    name = "digits-standin"
    data_shape = (1, 8, 8)
    modality = ImageModality(data_shape)
    seed = 0

    def __init__(self, variant: int = 0, labelled: bool = True) -> None:
        super().__init__()
        X, y = load_digits(return_X_y=True)
        self.x = torch.from_numpy(np.round(X * 255 / 16)).to(torch.uint8).view(-1, 1, 8, 8)
        self.y = torch.from_numpy(y) if labelled else torch.full((len(y),), -1)
        self.num_classes = 10 if labelled else 0
        self.variant = variant
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(0))
        self.splits = {"test": order[:180], "val": order[180:360], "train": order[360:]}

    def split_dataset(self, split: str) -> Dataset:
        idx = self.splits[split]
        return TensorDataset(self.x[idx], self.y[idx])

    def identity(self) -> dict:
        return {"name": self.name, "variant": self.variant, "splits": [180, 180]}

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("val"), batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("test"), batch_size=64)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("train"), batch_size=64)


class ImagesDataset(Dataset):
    """What torch-fidelity takes as input: a Dataset of uint8 [C, H, W] tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The images are tiny: one thread is fastest here, and several oversubscribe the CPU badly
    when test files run in parallel (pytest-xdist, or other jobs on the machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # numpy's BLAS too (torch-fidelity's FID and KID)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    """One cache for the module, so that the classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dm():
    return Digits()


@pytest.fixture(scope="module")
def extractor(dm, fid_cache):
    return fid.build_feature_extractor("classifier", dm, fid_cache)


def test_classifier_is_accurate_and_cached(dm, fid_cache, extractor, monkeypatch):
    path = fid.classifier_path(dm, fid_cache)
    assert path.is_file()
    assert extractor.name == "classifier"
    assert path.name.startswith("classifier-")
    assert torch.load(path, weights_only=True)["val_accuracy"] > 0.9

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(fid, "train_classifier", no_training)
    again = fid.build_feature_extractor("classifier", dm, fid_cache)
    assert again.key == extractor.key
    x = dm.split_dataset("val").tensors[0][:32]
    assert torch.equal(again.features(x), extractor.features(x))
    # another dataset identity needs another classifier
    assert fid.classifier_path(Digits(variant=1), fid_cache) != path


def test_identical_sets_give_zero(dm, extractor):
    stats = fid.statistics(extractor.features(dm.split_dataset("val").tensors[0]))
    value = fid.frechet_distance(stats, stats)
    # 0 in exact arithmetic: the mean term is exactly 0 and tr(sqrt(S S)) = tr(S). Taking the
    # square roots of the eigenvalues of S S (torch-fidelity's route) leaves round-off of about
    # sqrt(machine eps) = 1.5e-8 times the largest eigenvalue for each near-zero eigenvalue,
    # so |FID| stays far below 1e-6 of the total variance tr(S) (the scale FID is measured on).
    assert abs(value) < 1e-6 * np.trace(stats["sigma"])


def test_fid_equals_torch_fidelity(dm, extractor, fid_cache):
    real = dm.split_dataset("val").tensors[0]
    other = dm.split_dataset("train").tensors[0][:300]
    noisy = (other.float() + 40 * torch.randn(other.shape, generator=torch.Generator().manual_seed(0)))
    noisy = noisy.clamp(0, 255).round().to(torch.uint8)

    ours = fid.frechet_distance(
        fid.statistics(extractor.features(real)), fid.statistics(extractor.features(noisy))
    )
    theirs = torch_fidelity.calculate_metrics(
        input1=ImagesDataset(real),
        input2=ImagesDataset(noisy),
        fid=True,
        feature_extractor=fid.CLASSIFIER_FIDELITY_NAME,
        feature_extractor_weights_path=str(fid.classifier_path(dm, fid_cache)),
        feature_layer_fid="features",
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )[torch_fidelity.KEY_METRIC_FID]
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-6)

    # KID through torch-fidelity too (smoke): different sets score above identical ones
    f_real, f_noisy = extractor.features(real[:100]), extractor.features(noisy[:100])
    assert fid.kernel_distance(f_noisy, f_real) > fid.kernel_distance(f_real, f_real)


def test_reference_cache_hit_and_miss(dm, extractor, tmp_path, monkeypatch):
    calls = []
    features = extractor.features
    monkeypatch.setattr(extractor, "features", lambda x: calls.append(len(x)) or features(x))

    first = fid.reference_statistics(extractor, dm, "val", 100, tmp_path, chunk=40)
    assert not first["hit"] and first["path"].is_file() and first["n"] == 100
    assert first["path"].with_suffix(".json").is_file()
    assert sum(calls) == 100
    mtime = first["path"].stat().st_mtime_ns

    calls.clear()
    second = fid.reference_statistics(extractor, dm, "val", 100, tmp_path, chunk=40)
    assert second["hit"] and calls == [] and second["path"] == first["path"]
    assert second["path"].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second["mu"], first["mu"])
    np.testing.assert_array_equal(second["sigma"], first["sigma"])

    # every part of the key misses when it changes
    for changed in (
        dict(datamodule=dm, split="val", n=120),
        dict(datamodule=dm, split="test", n=100),
        dict(datamodule=Digits(variant=1), split="val", n=100),
    ):
        calls.clear()
        out = fid.reference_statistics(extractor, chunk=40, cache_dir=tmp_path, **changed)
        assert not out["hit"] and calls and out["path"] != first["path"]

    # more than the split holds: all of it, and the key says how many were used
    out = fid.reference_statistics(extractor, dm, "val", 10_000, tmp_path)
    assert out["n"] == 180 and not out["hit"]
    assert fid.reference_statistics(extractor, dm, "val", 5_000, tmp_path)["hit"]


def test_unlabelled_dataset_cannot_use_classifier(tmp_path):
    with pytest.raises(ConfigError, match="callbacks.fid.extractor=inception"):
        fid.build_feature_extractor("classifier", Digits(labelled=False), tmp_path)
    with pytest.raises(ConfigError, match="callbacks.fid.extractor=inception"):
        FIDCallback(extractor="classifier", cache_dir=str(tmp_path)).check(Digits(labelled=False))
    from genlab.data import FSDDDataModule  # audio: inception does not fit it, so it is not suggested

    with pytest.raises(ConfigError, match=r"unlabelled \(num_classes=0\)\. Use a labelled dataset \(no other extractor "
                                          r"measures audio data\), or callbacks\.fid=null"):
        FIDCallback(extractor="classifier", cache_dir=str(tmp_path)).check(FSDDDataModule(root=str(tmp_path), num_classes=0))


def test_inception_without_weights_or_network_fails_early(dm, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    callback = FIDCallback(extractor="inception", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        callback.check(dm)
    message = str(err.value)
    assert "callbacks.fid.weights_path" in message and "callbacks.fid.extractor=classifier" in message
    with pytest.raises(ConfigError, match="callbacks.fid.weights_path"):
        fid.build_feature_extractor("inception", dm, tmp_path)


def test_missing_weights_file_is_named(dm, tmp_path):
    missing = tmp_path / "nope" / "inception.pth"
    callback = FIDCallback(extractor="inception", weights_path=str(missing), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        callback.check(dm)
    assert "callbacks.fid.weights_path" in str(err.value) and str(missing) in str(err.value)


def test_bad_options_fail_early(dm, tmp_path):
    with pytest.raises(ConfigError, match="callbacks.fid.extractor"):
        FIDCallback(extractor="vgg")
    with pytest.raises(ConfigError, match="callbacks.fid.isc"):
        FIDCallback(extractor="classifier", isc=True, cache_dir=str(tmp_path)).check(dm)


def test_inception_from_local_weights_file(dm, tmp_path, monkeypatch):
    """The offline inception path end to end, with random (not downloaded) weights."""
    from torch_fidelity import feature_extractor_inceptionv3 as fid_inception
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:
        m.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        with seeded(0):
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        weights = tmp_path / "inception.pth"
        torch.save(net.state_dict(), weights)

    extractor = fid.build_feature_extractor("inception", dm, tmp_path, weights_path=weights, isc=True)
    assert extractor.name == "inception" and hashlib.sha1(weights.read_bytes()).hexdigest()[:16] in extractor.key
    out = extractor.extract(dm.split_dataset("val").tensors[0][:4])  # grey -> RGB inside
    assert out["2048"].shape == (4, 2048) and out["2048"].dtype == torch.float64
    assert out["logits_unbiased"].shape == (4, 1008)
    assert np.isfinite(fid.inception_score(out["logits_unbiased"]))


# --------------------------------------------------------------------------- the callback


class StandInSampler(Sampler):
    def __init__(self, images: torch.Tensor | None) -> None:
        self.images = images  # None: uniform noise

    def sample(self, model, n, labels=None):
        if self.images is None:
            return torch.randint(0, 256, (n, *model.data_shape), dtype=torch.uint8)
        return self.images[torch.randint(len(self.images), (n,))]


class StandInModel(GenerativeModel):
    family = "standin"

    def __init__(self, sampler: StandInSampler) -> None:
        super().__init__(data_shape=(1, 8, 8), num_classes=10)
        self.layer = torch.nn.Linear(1, 1)
        self.sampler = sampler

    def training_step(self, batch, batch_idx):
        return self.layer(torch.ones(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def test_step(self, batch, batch_idx):
        return None


def _trainer(callback: FIDCallback) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=1, limit_test_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback],
    )  # fmt: skip


def test_callback_orders_noise_above_real_images(dm, fid_cache):
    train_images = dm.split_dataset("train").tensors[0]
    values = {}
    for kind, images in (("real", train_images), ("noise", None)):
        callback = FIDCallback("classifier", num_samples=180, cache_dir=str(fid_cache), chunk_size=64)
        trainer = _trainer(callback)
        model = StandInModel(StandInSampler(images))
        trainer.validate(model, datamodule=dm, verbose=False)
        values[kind] = float(trainer.callback_metrics["val/fid_classifier"])
        trainer.test(model, datamodule=dm, verbose=False)
        assert "test/fid_classifier" in trainer.callback_metrics
    assert 0 <= values["real"] < values["noise"]
    assert values["noise"] > 10 * values["real"]


def test_callback_same_images_as_reference_give_zero(dm, fid_cache):
    """Generated = the val split itself, in order: FID against val is ~0."""
    val = dm.split_dataset("val").tensors[0]

    class InOrder(Sampler):
        def __init__(self):
            self.next = 0

        def sample(self, model, n, labels=None):
            out = val[self.next : self.next + n]
            self.next += n
            return out

    callback = FIDCallback(
        extractor="classifier", num_samples=len(val), cache_dir=str(fid_cache), chunk_size=50, kid=True
    )
    model = StandInModel(InOrder())
    model.train()
    values = callback.compute(model, model.sampler, dm, "val")
    assert np.isfinite(values["val/kid_classifier"])
    reference = fid.reference_statistics(callback.extractor, dm, "val", len(val), fid_cache)
    assert reference["hit"]  # computed by compute() just before
    assert abs(values["val/fid_classifier"]) < 1e-6 * np.trace(reference["sigma"])  # see above
    assert model.training  # the mode is restored after sampling


class InOrder(Sampler):
    """Hands out the given images in order, chunk after chunk."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.next = images, 0

    def sample(self, model, n, labels=None):
        out = self.images[self.next : self.next + n]
        self.next += n
        return out


def test_precision_recall_equal_torch_fidelity_on_the_same_images(dm, fid_cache):
    """The callback's precision/recall = torch-fidelity's calculate_metrics(prc=True) on the same
    generated and reference images with the same extractor, exactly (both are fractions of 180)."""
    val = dm.split_dataset("val").tensors[0]
    train = dm.split_dataset("train").tensors[0][:180]
    noisy = (train.float() + 60 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0)))
    generated = torch.cat([train[:90], noisy[90:].clamp(0, 255).round().to(torch.uint8)])
    callback = FIDCallback("classifier", num_samples=180, cache_dir=str(fid_cache), chunk_size=50)
    values = callback.compute(StandInModel(InOrder(generated)), InOrder(generated), dm, "val")
    theirs = torch_fidelity.calculate_metrics(
        input1=ImagesDataset(generated), input2=ImagesDataset(val), prc=True,
        feature_extractor=fid.CLASSIFIER_FIDELITY_NAME,
        feature_extractor_weights_path=str(fid.classifier_path(dm, fid_cache)),
        feature_layer_prc="features", cuda=False, cache=False, verbose=False,
    )  # fmt: skip
    assert values["val/precision_classifier"] == theirs[torch_fidelity.KEY_METRIC_PRECISION]
    assert values["val/recall_classifier"] == theirs[torch_fidelity.KEY_METRIC_RECALL]
    assert 0.1 < values["val/precision_classifier"] < 0.9  # neither trivially 0 nor 1

    # mode seeking: images of two classes only look real (precision) but cover little (recall)
    labels = dm.split_dataset("train").tensors[1]
    two = dm.split_dataset("train").tensors[0][labels < 2][:180]
    dropped = FIDCallback("classifier", num_samples=len(two), cache_dir=str(fid_cache)).compute(
        StandInModel(InOrder(two)), InOrder(two), dm, "val")
    assert dropped["val/precision_classifier"] > 0.8 and dropped["val/recall_classifier"] < 0.4


def test_split_train_measures_against_the_train_split_with_its_own_cache(dm, fid_cache):
    """callbacks.fid.split=train: the val stage's numbers (named val/...) measure the samples
    against the train split, whose reference statistics have their own cache key."""
    train = dm.split_dataset("train").tensors[0][:180]
    own = FIDCallback("classifier", num_samples=180, cache_dir=str(fid_cache), chunk_size=60)
    on_train = FIDCallback("classifier", num_samples=180, cache_dir=str(fid_cache), chunk_size=60, split="train")
    against_val = own.compute(StandInModel(InOrder(train)), InOrder(train), dm, "val")
    against_train = on_train.compute(StandInModel(InOrder(train)), InOrder(train), dm, "val")
    assert against_train["val/fid_classifier"] < 1e-6 < against_val["val/fid_classifier"]  # the train images themselves
    assert against_train["val/recall_classifier"] == 1.0
    paths = {split: fid.reference_statistics(on_train.extractor, dm, split, 180, fid_cache)["path"]
             for split in ("train", "val")}
    assert paths["train"] != paths["val"] and paths["train"].is_file()
    with pytest.raises(ConfigError, match="callbacks.fid.split='training'"):
        FIDCallback("classifier", split="training")


def test_missing_sampler_is_a_clear_error(dm, fid_cache):
    model = StandInModel(StandInSampler(None))
    del model.sampler
    trainer = _trainer(FIDCallback(extractor="classifier", num_samples=16, cache_dir=str(fid_cache)))
    with pytest.raises(ConfigError, match="sampler"):
        trainer.validate(model, datamodule=dm, verbose=False)


def test_callback_runs_every_n_epochs_and_not_in_sanity_check(dm, fid_cache):
    callback = FIDCallback("classifier", num_samples=32, cache_dir=str(fid_cache), every_n_epochs=2)
    calls = []
    compute = callback.compute
    callback.compute = lambda *args: calls.append(trainer.current_epoch) or compute(*args)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(StandInModel(StandInSampler(None)), datamodule=dm)
    assert calls == [1]
    assert "val/fid_classifier" in trainer.callback_metrics


def test_runs_that_differ_only_in_seed_share_one_classifier(tmp_path):
    from genlab.data import DigitsDataModule

    paths = {fid.classifier_path(DigitsDataModule(seed=seed), tmp_path) for seed in (0, 1, 7)}
    assert len(paths) == 1
    assert fid.classifier_path(DigitsDataModule(seed=0, val_fraction=0.2), tmp_path) not in paths
    dm = DigitsDataModule(seed=3)
    dm.setup()
    other = dm.with_seed(0)
    other.setup()
    assert dm.seed == 3 and not torch.equal(dm.split_dataset("val")[0][0], other.split_dataset("val")[0][0])


def test_the_reference_cache_follows_the_umask(tmp_path):
    """Cached statistics are shared results: a teammate on the same project folder can read them."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        path = tmp_path / "cache" / "ref.npz"
        fid._save_reference(path, {"k": 1}, '{"k": 1}', {"mu": np.zeros(3)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == 0o644
    assert fid._load_reference(path, '{"k": 1}', False)["mu"].tolist() == [0.0, 0.0, 0.0]
    assert not list(path.parent.glob(".*.tmp"))


def test_fid_states_its_reference_size_and_a_real_against_real_noise_floor(dm, fid_cache):
    test_images = dm.split_dataset("test").tensors[0]  # real digits the reference never saw
    model = StandInModel(StandInSampler(test_images))
    callback = FIDCallback("classifier", num_samples=180, cache_dir=str(fid_cache), chunk_size=90)
    values = callback.compute(model, model.sampler, dm, "val")
    assert values["val/fid_classifier_ref_size"] == 180
    features = {split: callback.extractor.features(dm.split_dataset(split).tensors[0][:180])
                for split in ("train", "val")}
    floor = fid.frechet_distance(fid.statistics(features["train"]), fid.statistics(features["val"]))
    assert values["val/fid_classifier_floor"] == pytest.approx(floor, rel=1e-6)
    # real held-out images drawn as "samples" score about the floor: nothing beats it by much
    assert floor / 3 < values["val/fid_classifier"] < 3 * floor
    # more samples than the split holds: the larger train split is the reference, the split the floor
    values = FIDCallback("classifier", num_samples=400, cache_dir=str(fid_cache), chunk_size=200).compute(
        model, model.sampler, dm, "val")
    assert values["val/fid_classifier_ref_size"] == len(dm.split_dataset("train"))
