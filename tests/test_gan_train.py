"""The GAN end to end through the entry points: training, EMA, a NaN stop, DDP, experiments."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from genlab.checkpoint import load_model, read_checkpoint
from genlab.config import instantiate
from genlab.errors import TrainingDiverged
from genlab.nets.likelihoods import to_uint8
from genlab.sample import sample
from genlab.train import train

from conftest import compose_cfg
from test_ddp import run_cli

pytestmark = pytest.mark.slow

FAST = [
    "experiment=dcgan_digits",
    "model.latent_dim=8", "model.g_width=8", "model.d_width=8",
    "trainer.max_epochs=2",
    "trainer.check_val_every_n_epoch=1",
    "callbacks.fid.num_samples=100",
    "callbacks.samples.n=16",
]
BATCHES_PER_EPOCH = 23  # 1,437 training digits in batches of 64


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    cfg = compose_cfg(overrides=[*FAST, "model.loss=hinge", "logger=csv"], output_dir=out)
    logger = logging.getLogger("genlab.callbacks.bpd")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        objective = train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, cfg, objective, records


def test_training_logs_fid_and_the_game_but_no_bits_per_dim(gan_run):
    out, _, objective, bpd_messages = gan_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    final = metrics["final"]
    for key in ("val/fid_classifier", "test/fid_classifier", "train/d_loss", "train/g_loss", "train/d_real",
                "train/d_fake", "val/d_real", "val/d_fake"):
        assert math.isfinite(final[key]), key
    assert objective == metrics["best"]["val/fid_classifier"]
    assert not [k for k in [*final, *metrics["best"]] if "bpd" in k]
    assert "gan" in metrics["not_applicable"]["bpd"]
    assert bpd_messages == ["bits/dim: not applicable (the gan family has no likelihood)"]  # once, val and test
    assert len(list((out / "samples").glob("*.png"))) == 2


def test_training_updates_both_networks_and_the_generator_ema(gan_run):
    out, cfg, _, _ = gan_run
    pl.seed_everything(cfg.seed)
    model = instantiate(cfg.model, "model")
    initial = {name: p.detach() for name, p in model.named_parameters()}
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    current, averaged = ckpt["current_model_state"], ckpt["state_dict"]
    for net in ("generator.", "discriminator."):
        weights = [k for k in initial if k.startswith(net)]
        assert weights and all(not torch.equal(initial[k], current[k]) for k in weights), net
    g_weights = [k for k in initial if k.startswith("generator.")]
    assert all(not torch.equal(current[k], averaged[k]) for k in g_weights)  # sampling uses the average
    # one generator step per training batch, two optimizer steps (D, G) per batch for hinge
    g_steps = 2 * BATCHES_PER_EPOCH
    assert ckpt["global_step"] == 2 * g_steps
    assert int(ckpt["averaging_state"]["n_averaged"]) == g_steps  # the EMA stepped with G


def test_the_sample_command_draws_from_the_ema_generator_with_truncation(gan_run, tmp_path):
    out, _, _, _ = gan_run
    ckpt_path = out / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt_path}", "n=8"], output_dir=tmp_path / "plain"))
    plain = np.load(tmp_path / "plain" / "samples.npz")["images"]
    assert plain.shape == (8, 1, 8, 8) and len({img.tobytes() for img in plain}) == 8
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt_path}", "n=8", "+sampler.psi=0"],
                       output_dir=tmp_path / "psi0"))
    collapsed = np.load(tmp_path / "psi0" / "samples.npz")["images"]
    checkpoint = read_checkpoint(ckpt_path)
    model = load_model(checkpoint, OmegaConf.create(checkpoint["genlab"]["config"]["model"]))  # the EMA weights
    with torch.no_grad():
        at_mean = to_uint8(model.generate(model.mean_latent()[None]))
    assert (collapsed == at_mean.numpy()).all()


class PoisonAt(pl.Callback):
    """Makes the discriminator's output NaN from the first batch of ``epoch`` on."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                pl_module.discriminator.to_logit.bias.fill_(float("nan"))


def test_a_nan_stops_the_run_and_the_last_good_checkpoint_stays_loadable(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_TRUSTED_MODULES", __name__)  # the config builds PoisonAt from this module
    cfg = compose_cfg(overrides=[*FAST, "trainer.max_epochs=3", "callbacks.fid=null", "objective=val/d_loss",
                                 "logger=none", "+callbacks.poison._target_=test_gan_train.PoisonAt",
                                 "+callbacks.poison.epoch=1"], output_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"not finite at step 46 \(epoch 1\): d_loss=nan"):
        train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2 * BATCHES_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    sample(compose_cfg("sample", overrides=[f"ckpt={last}", "n=4"], output_dir=tmp_path / "s"))
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape == (4, 1, 8, 8)


def test_conditional_gan_samples_the_chosen_classes(tmp_path):
    cfg = compose_cfg(overrides=[*FAST, "model.conditional=true", "model.loss=wgan_gp", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=4", "logger=none", "test=false"],
                      output_dir=tmp_path / "run")
    assert math.isfinite(train(cfg))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=6", "classes=[3,7]"], output_dir=tmp_path / "s"))
    assert np.load(tmp_path / "s" / "samples.npz")["labels"].tolist() == [3, 7, 3, 7, 3, 7]


def test_ddp_cpu_trains_with_manual_optimization(tmp_path):
    run_cli("genlab.train", "hardware=ddp_cpu", *FAST, "model.loss=wgan_gp", "model.conditional=true",
            "trainer.max_epochs=1", "logger=csv", "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}")
    runs = [p.parent for p in tmp_path.rglob(".hydra")]
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert math.isfinite(metrics["final"]["val/fid_classifier"]) and math.isfinite(metrics["final"]["train/gp"])
    ckpt = read_checkpoint(runs[0] / "checkpoints" / "last.ckpt")
    # each process sees half of each epoch: 12 batches of 5 critic steps and 1 generator step
    assert ckpt["global_step"] == 12 * 6 and int(ckpt["averaging_state"]["n_averaged"]) == 12


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("dcgan_*.yaml")))
def test_every_dcgan_experiment_runs_a_few_steps(name, tmp_path, mnist_root, cifar_folder):
    overrides = [f"experiment={name}", "trainer.limit_train_batches=2", "trainer.max_epochs=1",
                 "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                 "model.g_width=8", "model.d_width=8", "dataset.batch_size=16", "dataset.eval_batch_size=16",
                 "callbacks.samples.n=4", "logger=none"]
    if "mnist" in name:
        overrides += [f"dataset.root={mnist_root}", "dataset.pool=test", "callbacks.fid=null", "objective=val/d_loss"]
    elif "cifar10" in name:
        # The real CIFAR-10 loader cannot download here: the same images from the JPEG copy.
        overrides += ["dataset=image_folder", f"dataset.root={cifar_folder}", "dataset.num_classes=10",
                      "callbacks.fid=null", "objective=val/d_loss"]
    else:
        overrides += ["callbacks.fid.num_samples=100"]
    objective = train(compose_cfg(overrides=overrides, output_dir=tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and objective == metrics["best"][metrics_key(overrides)]


def metrics_key(overrides: list[str]) -> str:
    return "val/d_loss" if "objective=val/d_loss" in overrides else "val/fid_classifier"
