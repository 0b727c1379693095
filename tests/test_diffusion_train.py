"""The diffusion family end to end: training on digits, the shared metric callbacks, EMA
weights in checkpoints and sampling, every ddpm experiment, and hardware=ddp_cpu."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from genlab.checkpoint import load_model, read_checkpoint
from genlab.config import instantiate
from genlab.sample import sample
from genlab.samplers.ddim import DDIMSampler
from genlab.train import train
from genlab.utils import seeded

from conftest import compose_cfg
from test_ddp import run_cli

pytestmark = pytest.mark.slow

# A tiny UNet and short chains: the same code paths as the real configs, in seconds.
TINY = ["model=ddpm", "model.channels=8", "model.num_res_blocks=1", "model.timesteps=100",
        "model.bound_timesteps=4", "sampler.steps=10", "model.optimizer.lr=2e-3"]
FAST = [*TINY, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", "callbacks.fid.num_samples=100",
        "callbacks.bpd.max_examples=60", "callbacks.samples.n=16"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm")
    objective = train(compose_cfg(overrides=[*FAST, "logger=csv"], output_dir=out))
    return out, objective


def test_training_logs_loss_fid_and_the_bound(digits_run, caplog):
    out, objective = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    final = metrics["final"]
    for key in ("train/loss", "val/loss", "val/bpd", "val/fid_classifier", "test/bpd", "test/fid_classifier"):
        assert math.isfinite(final[key]), key
    assert objective == metrics["best"]["val/bpd"]
    assert 0 < final["test/bpd"] < 20
    assert len(list((out / "samples").glob("*.png"))) == 3


def test_training_lowers_the_loss(digits_run, tmp_path):
    out, _ = digits_run
    cfg = compose_cfg(overrides=[*FAST, "logger=none"], output_dir=tmp_path)
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    datamodule = instantiate(cfg.dataset, "dataset")

    def val_loss(model):
        pl.seed_everything(0)
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
        return trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]

    pl.seed_everything(0)
    untrained = val_loss(instantiate(cfg.model, "model"))
    trained = val_loss(load_model(ckpt, cfg.model))
    assert untrained > 0.5 and trained < 0.6 * untrained


def test_checkpoints_and_sampling_use_the_ema_weights(digits_run, tmp_path):
    out, _ = digits_run
    path = out / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    sample(compose_cfg("sample", overrides=[f"ckpt={path}", "n=12"], output_dir=tmp_path))
    images = np.load(tmp_path / "samples.npz")["images"]
    assert images.dtype == np.uint8 and images.shape == (12, 1, 8, 8)
    assert images.min() < 64 and images.max() > 192  # dark background and bright strokes, not noise-grey

    cfg = compose_cfg(overrides=FAST)
    model = load_model(ckpt, cfg.model)  # what genlab-sample loads: the average
    with seeded(0):
        again = DDIMSampler(steps=10).sample(model, 12)
    assert np.array_equal(again.numpy(), images)
    model.load_state_dict(raw)
    with seeded(0):
        from_raw = DDIMSampler(steps=10).sample(model, 12)
    assert not np.array_equal(from_raw.numpy(), images)


def test_sample_with_the_ancestral_sampler_from_the_command_line_config(digits_run, tmp_path):
    out, _ = digits_run
    path = out / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={path}", "n=6", "sampler=ddpm", "sampler.variance=posterior"],
                       output_dir=tmp_path))
    images = np.load(tmp_path / "samples.npz")["images"]
    assert images.shape == (6, 1, 8, 8) and images.std() > 20


def test_conditional_model_with_guidance_draws_the_chosen_classes(tmp_path):
    cfg = compose_cfg(overrides=[*FAST, "model.conditional=true", "trainer.max_epochs=1", "callbacks.fid=null",
                                 "logger=none", "test=false", "sampler.guidance_scale=2.0"], output_dir=tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=6", "classes=[3,7]"], output_dir=tmp_path / "s"))
    arrays = np.load(tmp_path / "s" / "samples.npz")
    assert arrays["labels"].tolist() == [3, 7, 3, 7, 3, 7] and arrays["images"].dtype == np.uint8


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("ddpm_*.yaml")))
def test_every_ddpm_experiment_runs_a_few_steps(name, tmp_path, mnist_root, cifar_folder):
    # The experiments' structure (levels, attention, schedule, warm-up) at a small width.
    overrides = [f"experiment={name}", "model.channels=8", "model.bound_timesteps=2", "sampler.steps=2",
                 "dataset.batch_size=8", "trainer.limit_train_batches=2", "trainer.max_epochs=1", "trainer.max_steps=-1",
                 "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                 "callbacks.bpd.max_examples=8", "callbacks.fid=null", "logger=none"]
    if "mnist" in name:
        overrides += [f"dataset.root={mnist_root}", "dataset.pool=test"]
    elif "cifar10" in name:
        overrides += ["dataset=image_folder", f"dataset.root={cifar_folder}", "dataset.num_classes=10"]
    objective = train(compose_cfg(overrides=overrides, output_dir=tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert objective == metrics["best"]["val/bpd"]
    assert metrics["status"] == "completed" and math.isfinite(metrics["final"]["test/bpd"])


def test_ddp_cpu_training(tmp_path):
    run_cli("genlab.train", "hardware=ddp_cpu", *FAST, "trainer.max_epochs=1", "callbacks.fid.num_samples=40",
            "callbacks.fid.chunk_size=20", "callbacks.bpd.max_examples=40", "callbacks.bpd.chunk_size=20",
            "logger=csv", "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}")
    runs = [p.parent for p in tmp_path.rglob(".hydra")]
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert math.isfinite(metrics["final"]["test/bpd"]) and math.isfinite(metrics["final"]["test/fid_classifier"])
