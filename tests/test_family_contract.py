"""The contract every model family passes (DESIGN.md, contracts 1-3), at tiny sizes on digits:

uint8 batches in; ``nll_bits`` of shape [B] and finite, or "not applicable" declared
(``likelihood = None`` and NotImplementedError); the default sampler's samples in the data
contract (the data shape, uint8); a short training on digits lowers the family's own loss; a
checkpoint round trip through genlab's safe reader gives the same model.

A new family joins by one line in FAMILIES: its model option and the overrides that make it tiny
(``{stage1}`` stands for the checkpoint of an untrained tiny VQ-VAE on digits, for a second stage).

For a conditional family the contract includes the point of conditioning: samples drawn for class
k are assigned to k by an independent classifier (bench.quality's RBF SVM fitted on the digits'
train split, 0.99 accurate on held-out digits; not the net behind FID) at a stated rate, after a
short training on digits. A conditional family joins by one line in CONDITIONAL.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from genlab.checkpoint import load_model, read_checkpoint
from genlab.config import build_sampler, instantiate
from genlab.utils import seeded

from conftest import compose_cfg

FAMILIES = {
    "vae": ["model=vae", "model.channels=[8,16]", "model.latent_dim=4", "model.iw_samples=4"],
    "cvae": ["model=cvae", "model.channels=[8,16]", "model.latent_dim=4", "model.iw_samples=4"],
    "hvae": ["model=hvae", "model.channels=8", "model.groups=2", "model.iw_samples=4", "model.kl_warmup_steps=0"],
    "pixelcnn": ["model=pixelcnn", "model.channels=8", "model.blocks=1", "model.head_channels=16"],
    "gated_pixelcnn": ["model=gated_pixelcnn", "model.channels=8", "model.layers=2", "model.head_channels=16"],
    "ar_transformer": ["model=ar_transformer", "model.dim=16", "model.depth=1", "model.heads=2"],
    "pixelrnn": ["model=pixelrnn", "model.variant=row_lstm", "model.channels=8", "model.hidden=8",
                 "model.layers=1", "model.head_channels=16"],  # diagonal_bilstm: test_pixelrnn, test_config
    "ddpm": ["model=ddpm", "model.channels=8", "model.attention_resolutions=[]", "model.bound_timesteps=4",
             "model.timesteps=100", "sampler.steps=4"],
    "nice": ["model=nice", "model.hidden=8", "model.steps=2"],
    "realnvp": ["model=realnvp", "model.hidden=8", "model.steps=2", "model.blocks=1"],
    "glow": ["model=glow", "model.hidden=8", "model.steps=2"],
    "dcgan": ["model=dcgan", "model.latent_dim=8", "model.g_width=8", "model.d_width=8"],
    "stylegan": ["model=stylegan", "model.latent_dim=8", "model.w_dim=8", "model.g_width=8", "model.d_width=8",
                 "model.max_width=16"],
    "vqvae": ["model=vqvae", "model.channels=8", "model.latent_dim=4", "model.codebook_size=8", "model.res_blocks=1"],
    "vqvae_prior": ["model=vqvae_prior", "model.vqvae_ckpt={stage1}", "model.dim=16", "model.depth=1", "model.heads=2"],
}
STEPS = 16

#: conditional families: (overrides, training steps at batch 64, the rate of 200 samples drawn for
#: class k that the independent classifier calls k must reach). Chance is 0.1 (standard error 0.02
#: at n=200). Measured (seed 0, one thread): cvae 0.905, dcgan 0.40, ar_transformer 0.47,
#: gated_pixelcnn 0.68, pixelcnn 0.28, pixelrnn (row_lstm) 0.295; each floor is about two thirds of
#: that, well above chance. The autoregressive nets train at lr 5e-3 here (1e-3 shipped): at 1e-3
#: they need several times the steps to pick up the class. A short training of these tiny models
#: is far from the shipped experiments' rates (bench/quality.md). DDPM's conditioning needs more
#: than this budget: tests/test_quality.py's ddpm_digits_guided floor (0.8) covers it.
CONDITIONAL = {
    "cvae": (["model=cvae", "model.channels=[8,16]", "model.latent_dim=4", "model.iw_samples=4"], 200, 0.6),
    "dcgan": (["model=dcgan", "model.conditional=true", "model.latent_dim=8", "model.g_width=16", "model.d_width=16"],
              300, 0.25),
    "ar_transformer": (["model=ar_transformer", "model.conditional=true", "model.dim=32", "model.depth=2",
                        "model.heads=2", "model.optimizer.lr=5e-3"], 200, 0.3),
    "gated_pixelcnn": (["model=gated_pixelcnn", "model.conditional=true", "model.channels=16", "model.layers=3",
                        "model.head_channels=32", "model.optimizer.lr=5e-3"], 200, 0.45),
    "pixelcnn": (["model=pixelcnn", "model.conditional=true", "model.channels=16", "model.blocks=2",
                  "model.head_channels=32", "model.optimizer.lr=5e-3"], 200, 0.18),
    "pixelrnn": (["model=pixelrnn", "model.conditional=true", "model.variant=row_lstm", "model.channels=16",
                  "model.hidden=16", "model.layers=1", "model.head_channels=32", "model.optimizer.lr=5e-3"], 200, 0.18),
}


class LossRecorder(pl.Callback):
    """The family's own training loss (its first step metric) after every step."""

    def __init__(self, name: str) -> None:
        self.name, self.values = name, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics[self.name]))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("stage1") / "vqvae.ckpt"
    cfg = compose_cfg(overrides=["dataset=digits", *FAMILIES["vqvae"]], output_dir=path.parent)
    torch.manual_seed(0)
    state = instantiate(cfg.model, "model").state_dict()
    torch.save({"state_dict": state, "genlab": {"config": OmegaConf.to_container(cfg, resolve=True)}}, path)
    return str(path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_honours_the_contract(family, tmp_path, request):
    overrides = [o.format(stage1=request.getfixturevalue("stage1")) if "{stage1}" in o else o for o in FAMILIES[family]]
    cfg = compose_cfg(overrides=["dataset=digits", "dataset.batch_size=32", *overrides], output_dir=tmp_path)
    datamodule = instantiate(cfg.dataset, "dataset")
    data = Subset(datamodule.split_dataset("train"), range(64))
    x, y = next(iter(DataLoader(data, batch_size=8)))
    assert x.dtype == torch.uint8
    torch.manual_seed(0)
    model = instantiate(cfg.model, "model")
    shape = tuple(model.data_shape)
    labels = y if model.conditional else None

    # likelihood: [B] and finite, or declared not applicable
    if model.likelihood is None:
        with pytest.raises(NotImplementedError):
            model.nll_bits(x)
    else:
        assert model.likelihood in ("exact", "bound")
        with torch.no_grad(), seeded(0):
            bits = model.eval().nll_bits(x, labels)
        assert bits.shape == (8,) and torch.isfinite(bits).all()

    # the default sampler: the data contract
    sampler = build_sampler(cfg.sampler, model)
    with seeded(0):
        samples = sampler.sample(model.eval(), 2)
    assert samples.shape == (2, *shape) and samples.dtype == torch.uint8

    # a short training on digits lowers the family's own loss
    recorder = LossRecorder(f"train/{model.step_metrics[0]}")
    model.sampler = sampler
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[recorder], default_root_dir=tmp_path)
    trainer.fit(model.train(), DataLoader(data, batch_size=16, shuffle=True))
    first, last = recorder.values[:4], recorder.values[-4:]
    assert len(recorder.values) == STEPS and all(math.isfinite(v) for v in recorder.values)
    assert sum(last) < sum(first), recorder.values

    # checkpoint round trip through genlab's safe reader and loader
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "genlab": {"config": OmegaConf.to_container(cfg, resolve=True)}},
               path)
    loaded = load_model(read_checkpoint(path), cfg.model, f"ckpt={path}")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    if model.likelihood is not None:
        with torch.no_grad():
            with seeded(0):
                expected = model.eval().nll_bits(x, labels)
            with seeded(0):
                torch.testing.assert_close(loaded.nll_bits(x, labels), expected)


@pytest.mark.slow
@pytest.mark.parametrize("experiment, sizes", [
    ("pixelrnn_digits", ["model.variant=row_lstm", "model.channels=8", "model.hidden=8", "model.layers=1",
                         "model.head_channels=16"]),
    ("hvae_digits", ["model.channels=8", "model.groups=2", "model.iw_samples=4"]),
])
def test_the_new_families_train_are_scored_and_sample_through_the_entry_points(experiment, sizes, tmp_path):
    """(VQ-VAE and its prior: tests/test_vqvae.py.)"""
    import json

    import numpy as np

    from genlab.sample import sample
    from genlab.train import train

    run = tmp_path / "run"
    train(compose_cfg(overrides=[f"experiment={experiment}", *sizes, "trainer.max_epochs=1", "trainer.limit_train_batches=10",
                                 "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=64",
                                 "callbacks.samples.n=4", "callbacks.fid.num_samples=32",
                                 "callbacks.fid.chunk_size=32", "logger=none"], output_dir=run))
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["test/bpd"] < 8.0 and math.isfinite(final["test/fid_classifier"])
    sample(compose_cfg("sample", overrides=[f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "n=4"],
                       output_dir=tmp_path / "s"))
    images = np.load(tmp_path / "s" / "samples.npz")["images"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == np.uint8


@pytest.fixture(scope="module")
def independent_classifier():
    from bench.quality import IndependentClassifier, datamodule_of

    return IndependentClassifier(datamodule_of("vae_digits", []))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CONDITIONAL))
def test_conditional_samples_are_of_the_class_asked_for(family, independent_classifier, tmp_path):
    overrides, steps, floor = CONDITIONAL[family]
    cfg = compose_cfg(overrides=["dataset=digits", *overrides], output_dir=tmp_path)
    train = instantiate(cfg.dataset, "dataset").split_dataset("train")
    torch.manual_seed(0)
    model = instantiate(cfg.model, "model")
    assert model.conditional and model.num_classes == 10
    model.sampler = sampler = build_sampler(cfg.sampler, model)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model.train(), DataLoader(train, batch_size=64, shuffle=True,
                                          generator=torch.Generator().manual_seed(0)))
    labels = torch.arange(200) % 10
    with seeded(0):
        images = sampler.sample(model.eval(), 200, labels)
    assigned = independent_classifier.probabilities(images).argmax(1)
    rate = float((torch.as_tensor(assigned) == labels).double().mean())
    per_class = [round(float((torch.as_tensor(assigned)[labels == k] == k).double().mean()), 2) for k in range(10)]
    assert rate >= floor, f"{family}: {rate:.3f} of the samples are of the class asked for (floor {floor}; " \
                          f"chance 0.1); per class {per_class}"
