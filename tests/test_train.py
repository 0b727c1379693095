"""The VAE end to end through the plain entry-point functions: train, eval, sample, W&B."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.checkpoint import read_checkpoint
from genlab.evaluate import evaluate
from genlab.sample import sample
from genlab.train import train

from conftest import compose_cfg

FAST = [
    "trainer.max_epochs=3",
    "trainer.check_val_every_n_epoch=1",
    "callbacks.fid.num_samples=200",
    "callbacks.bpd.max_examples=100",
    "callbacks.samples.n=16",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(overrides=[*FAST, "logger=wandb"], output_dir=out)
    objective = train(cfg)
    return out, objective


def test_training_writes_a_complete_run(digits_run):
    out, objective = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    for key in ("val/bpd", "val/fid_classifier", "test/bpd", "test/fid_classifier", "train/loss"):
        assert math.isfinite(metrics["final"][key]), key
    assert objective == metrics["best"]["val/bpd"] <= metrics["final"]["val/bpd"]
    assert 0 < metrics["final"]["test/bpd"] < 8  # far better than uniform on real digits
    resolved = (out / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "precision: 32-true" in resolved
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    grids = sorted((out / "samples").glob("*.png"))
    assert len(grids) == 3
    assert Image.open(grids[-1]).size[0] >= 4 * 32  # 16 samples upscaled to >= 32 px each


def test_training_lowers_the_loss(digits_run, tmp_path):
    out, _ = digits_run
    trained = json.loads((out / "metrics.json").read_text())["final"]["val/elbo_bpd"]
    cfg = compose_cfg(overrides=[*FAST, "trainer.max_epochs=0", "logger=none", "test=false",
                                 "objective=val/elbo_bpd"], output_dir=tmp_path)
    from genlab.config import instantiate
    import pytorch_lightning as pl

    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset, "dataset")
    untrained = pl.Trainer(logger=False, enable_progress_bar=False).validate(
        instantiate(cfg.model, "model"), datamodule=datamodule, verbose=False)[0]["val/elbo_bpd"]
    assert trained < untrained - 0.3


def test_checkpoint_holds_the_config_and_the_ema_weights(digits_run):
    out, _ = digits_run
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["genlab"]["config"]["model"]["_target_"] == "genlab.models.vae.VAE"
    assert ckpt["genlab"]["family"] == "vae"
    # Lightning's weight averaging stores the EMA weights as the state_dict, the raw ones apart.
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_wandb_offline_run_holds_metrics_config_and_images(digits_run):
    from wandb_records import config_keys, history, read_records

    out, _ = digits_run
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = read_records(next(runs[0].glob("run-*.wandb")))
    rows = history(records)
    final = json.loads((out / "metrics.json").read_text())["final"]
    val_bpd = [row["val/bpd"] for row in rows if "val/bpd" in row]
    assert len(val_bpd) == 3 and val_bpd[-1] == pytest.approx(final["val/bpd"])
    test_row = next(row for row in rows if "test/bpd" in row)
    assert test_row["test/fid_classifier"] == pytest.approx(final["test/fid_classifier"])
    assert {"model", "dataset", "trainer", "seed"} <= config_keys(records)
    image_rows = [row for row in rows if row.get("samples/_type") == "images/separated"]
    assert len(image_rows) == 3
    images = sorted((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(images) == 3 and Image.open(images[0]).size[0] > 100


def test_eval_reproduces_the_test_metrics_of_the_checkpoint(digits_run, tmp_path):
    out, _ = digits_run
    best = next((out / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_cfg("eval", overrides=[f"ckpt={best}"], output_dir=tmp_path)
    result = evaluate(cfg)  # measures as the run did (200 FID samples, 100 examples)
    trained = json.loads((out / "metrics.json").read_text())["final"]
    # Same weights, same seeded chunks: the same numbers as the test stage after training.
    assert result["test/bpd"] == pytest.approx(trained["test/bpd"], rel=1e-5)
    assert result["test/fid_classifier"] == pytest.approx(trained["test/fid_classifier"], rel=1e-4)
    assert json.loads((tmp_path / "metrics.json").read_text())["final"] == result


def test_sample_writes_a_grid_and_an_npz(digits_run, tmp_path):
    out, _ = digits_run
    ckpt = out / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=10"], output_dir=tmp_path))
    arrays = np.load(tmp_path / "samples.npz")
    assert arrays["images"].shape == (10, 1, 8, 8) and arrays["images"].dtype == np.uint8
    assert Image.open(tmp_path / "samples.png").size[0] > 32
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=10"], output_dir=tmp_path / "again"))
    assert np.array_equal(np.load(tmp_path / "again" / "samples.npz")["images"], arrays["images"])  # seeded
    # A saved sampler key changed from the command line: temperature 0 decodes one latent.
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=5", "+sampler.temperature=0"],
                       output_dir=tmp_path / "cold"))
    cold = np.load(tmp_path / "cold" / "samples.npz")["images"]
    assert (cold == cold[0]).all() and not (arrays["images"] == arrays["images"][0]).all()


def test_conditional_vae_samples_the_chosen_classes(tmp_path):
    cfg = compose_cfg(overrides=["model=cvae", *FAST, "trainer.max_epochs=1", "callbacks.fid=null",
                                 "logger=none"], output_dir=tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=6", "classes=[3,7]"], output_dir=tmp_path / "s")
    sample(cfg)
    assert np.load(tmp_path / "s" / "samples.npz")["labels"].tolist() == [3, 7, 3, 7, 3, 7]


def test_training_on_an_image_folder(tiny_folder, tmp_path):
    cfg = compose_cfg(overrides=["dataset=image_folder", f"dataset.root={tiny_folder}",
                                 "dataset.image_size=8", "dataset.batch_size=16", *FAST, "callbacks.fid.extractor=classifier",
                                 "trainer.max_epochs=1", "logger=csv"], output_dir=tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert math.isfinite(metrics["test/bpd"]) and math.isfinite(metrics["test/fid_classifier"])
    assert (tmp_path / "csv" / "metrics.csv").is_file()


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


# Run by their families' own tests instead: GAN experiments have no bits/dim to assert on
# (tests/test_gan_train.py); ddpm_* run at a small width (tests/test_diffusion_train.py), and so
# do the audio experiments, on short clips (tests/test_audio_train.py); vqvae_prior_* need a stage-1
# checkpoint (both stages run in tests/test_vqvae.py). The CIFAR-10 PixelRNN and HVAE (25 s each
# here) are built by tests/test_config.py and their families trained by tests/test_family_contract.py.
@pytest.mark.parametrize("name", [name for name in EXPERIMENTS
                                  if not name.startswith(("dcgan_", "stylegan_", "ddpm_", "wavenet_", "waveglow_",
                                                          "vqvae_prior_"))
                                  and name not in ("pixelrnn_cifar10", "hvae_cifar10")])
def test_every_experiment_runs_a_few_steps(name, tmp_path, mnist_root, cifar_folder):
    # small batches: what is tested is that the shipped experiment runs end to end, not its speed
    overrides = [f"experiment={name}", "trainer.limit_train_batches=3", "trainer.max_epochs=1",
                 "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1", "callbacks.bpd.max_examples=8", "callbacks.samples.n=4",
                 "dataset.batch_size=4", "dataset.eval_batch_size=8", "logger=none"]
    if name.startswith(("vae", "cvae", "hvae")):  # the importance-weighted bound is the VAE's own key
        overrides.append("model.iw_samples=4")
    if "mnist" in name:
        overrides += [f"dataset.root={mnist_root}", "dataset.pool=test", "callbacks.fid=null"]
    elif "cifar10" in name:
        # The real CIFAR-10 loader cannot download here: the same images from the JPEG copy.
        overrides += ["dataset=image_folder", f"dataset.root={cifar_folder}", "dataset.num_classes=10",
                      "callbacks.fid=null"]
        if name.startswith(("autoregressive", "pixelrnn")):  # a GPU-sized net: 3,072 sampling steps per image
            overrides += ["callbacks.samples=null"]
    else:
        overrides += ["callbacks.fid.num_samples=100"]
    if name.startswith("pixelrnn"):  # sampling recomputes the whole image per sub-pixel
        overrides += ["callbacks.samples=null", "callbacks.fid=null"]
    objective = train(compose_cfg(overrides=overrides, output_dir=tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert objective == metrics["best"]["val/bpd"]
    assert metrics["status"] == "completed" and math.isfinite(metrics["final"]["test/bpd"])


def test_best_values_follow_each_metric_direction(tmp_path):
    from types import SimpleNamespace

    from genlab.callbacks.run import RunRecorder

    recorder = RunRecorder(tmp_path, {"objective": "val/custom", "objective_mode": "max"})
    for values in ({"val/bpd": 4.0, "val/acc": 0.5, "val/custom": 1.0, "train/disc_loss": 1.0},
                   {"val/bpd": 3.0, "val/acc": 0.875, "val/custom": 3.0, "train/disc_loss": 0.5},
                   {"val/bpd": 3.5, "val/acc": 0.75, "val/custom": 2.0, "train/disc_loss": 0.75}):
        recorder._collect(SimpleNamespace(sanity_checking=False,
                                          callback_metrics={k: torch.tensor(v) for k, v in values.items()}))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["best"] == {"val/bpd": 3.0, "val/acc": 0.875, "val/custom": 3.0, "train/disc_loss": 0.5}
    assert written["final"] == {"val/bpd": 3.5, "val/acc": 0.75, "val/custom": 2.0, "train/disc_loss": 0.75}


def test_a_family_without_likelihood_reports_bpd_not_applicable(tmp_path, caplog):
    """The contract for likelihood-free families (GANs): bits/dim is reported once as not
    applicable and never logged as a number."""
    import logging

    import pytorch_lightning as pl

    from genlab.callbacks.bpd import BitsPerDim
    from genlab.callbacks.run import RunRecorder
    from genlab.data import DigitsDataModule
    from genlab.models.base import GenerativeModel

    class NoLikelihood(GenerativeModel):
        family = "implicit"

        def __init__(self):
            super().__init__((1, 8, 8))
            self.w = torch.nn.Parameter(torch.zeros(1))

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.w.sum() + 1.0)

    recorder = RunRecorder(tmp_path, {})
    trainer = pl.Trainer(callbacks=[BitsPerDim(), recorder], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    with caplog.at_level(logging.INFO, logger="genlab.callbacks.bpd"):
        for _ in range(2):
            trainer.validate(NoLikelihood(), datamodule=DigitsDataModule(), verbose=False)
    assert "val/bpd" not in trainer.callback_metrics
    assert [r.message for r in caplog.records].count("bits/dim: not applicable (the implicit family has no likelihood)") == 1
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/bpd" not in written["final"] and "implicit" in written["not_applicable"]["bpd"]


def test_sample_grids_follow_the_validation_schedule(tmp_path):
    cfg = compose_cfg(overrides=["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
                                 "+callbacks.samples.every_n_epochs=2", "callbacks.fid=null", "logger=none",
                                 "callbacks.samples.n=4", "test=false"], output_dir=tmp_path)
    train(cfg)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "samples").glob("*.png")) == ["epoch001", "epoch003"]


def test_uniform_model_is_exactly_8_bits_per_dim_through_the_callback():
    import pytorch_lightning as pl

    from genlab.callbacks.bpd import BitsPerDim
    from genlab.data import DigitsDataModule
    from genlab.models.base import GenerativeModel
    from genlab.nets.likelihoods import Categorical256

    class Uniform(GenerativeModel):
        family, likelihood = "uniform", "exact"

        def nll_bits(self, x, y=None):
            logits = torch.zeros(x.shape[0], x.shape[1] * 256, *x.shape[2:])
            return -Categorical256(logits, x.shape[1]).log_prob(x).flatten(1).sum(1) / math.log(2)

        def validation_step(self, batch, batch_idx):
            pass

    trainer = pl.Trainer(callbacks=[BitsPerDim(chunk_size=7)], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    trainer.validate(Uniform((1, 8, 8)), datamodule=DigitsDataModule(), verbose=False)
    assert trainer.callback_metrics["val/bpd"].item() == pytest.approx(8.0, abs=1e-6)


def test_a_new_run_from_a_checkpoint_keeps_its_own_metrics(digits_run, tmp_path):
    """ckpt_path= (the whole training state) and init_from= (the weights only) start a new run:
    the source run's best values stay in the source run's metrics.json."""
    out, _ = digits_run
    source = out / "checkpoints" / "last.ckpt"
    before = json.loads((out / "metrics.json").read_text())
    cfg = compose_cfg(overrides=[*FAST, "trainer.max_epochs=4", "logger=none", "callbacks.fid=null", "test=false",
                                 f"ckpt_path={source}"], output_dir=tmp_path / "continued")
    train(cfg)
    after = json.loads((tmp_path / "continued" / "metrics.json").read_text())
    assert "val/fid_classifier" not in after["best"]  # measured by the source run only
    assert after["best"]["val/bpd"] == after["final"]["val/bpd"]  # one validation: epoch 4's
    assert read_checkpoint(tmp_path / "continued" / "checkpoints" / "last.ckpt")["epoch"] == 4  # went on from 3

    # init_from=: one step from the source's weights (the run validates at its end) stays near the
    # source's bits/dim (Adam's first step moves every weight by ~lr); one step from scratch is far worse
    tuned = {}
    for start in (f"init_from={source}", "seed=0"):
        cfg = compose_cfg(overrides=[*FAST, "trainer.max_steps=1", "logger=none", "callbacks.fid=null", "test=false",
                                     start], output_dir=tmp_path / start.split("=")[0])
        train(cfg)
        tuned[start] = json.loads((tmp_path / start.split("=")[0] / "metrics.json").read_text())
    ckpt = read_checkpoint(tmp_path / "init_from" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 1 and "val/fid_classifier" not in tuned[f"init_from={source}"]["best"]
    init, scratch = tuned[f"init_from={source}"]["final"]["val/bpd"], tuned["seed=0"]["final"]["val/bpd"]
    assert init < before["final"]["val/bpd"] + 0.4 and init < scratch - 0.3  # measured: 4.19 source, 4.48, 4.92
