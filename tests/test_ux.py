"""What a new user meets first (issue 16): a short run that still measures its objective, sample
images on W&B as in the run folder, validation metrics and parameter counts on screen, the
objective that follows the family, and every README command as written."""

import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from genlab.train import train

from conftest import compose_cfg
from test_sweeps import sweep_cli


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run of 5 steps with the default schedule (validation every 10 epochs: never reached)."""
    out = tmp_path_factory.mktemp("short")
    cfg = compose_cfg(overrides=["trainer.max_steps=5", "logger=wandb", "callbacks.fid.num_samples=100",
                                 "callbacks.bpd.max_examples=50", "model.iw_samples=2", "callbacks.samples.n=16",
                                 "test=false"], output_dir=out)
    return out, train(cfg)


def test_a_short_run_validates_once_at_its_end(short_run):
    out, objective = short_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "objective" not in metrics  # measured
    assert math.isfinite(objective) and objective == metrics["best"]["val/bpd"]
    assert [p.name for p in (out / "checkpoints").glob("best-*.ckpt")] == ["best-epoch000-step000005.ckpt"]
    assert len(list((out / "samples").glob("*.png"))) == 1


def test_wandb_sample_images_hold_the_pixels_of_the_run_folder_png(short_run):
    from wandb_records import history, read_records

    out, _ = short_run
    run = next((out / "wandb").glob("offline-run-*"))
    rows = [row for row in history(read_records(next(run.glob("run-*.wandb")))) if "samples" in str(row)]
    assert len(rows) == 1
    logged = np.asarray(Image.open(next((run / "files" / "media" / "images").glob("samples_*.png"))).convert("RGB"))
    saved = np.asarray(Image.open(next((out / "samples").glob("*.png"))).convert("RGB"))
    assert logged.shape == saved.shape and np.array_equal(logged, saved)
    assert logged.max() == 255 and len(np.unique(logged)) > 10  # not the black 0/1 image W&B made of floats


def test_validation_metrics_config_and_parameter_counts_are_shown(tmp_path, capfd, caplog):
    cfg = compose_cfg(overrides=["trainer.max_steps=3", "logger=none", "callbacks.fid=null", "model.iw_samples=2",
                                 "callbacks.bpd.max_examples=20", "test=false", "callbacks.samples.n=4"],
                      output_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        train(cfg)
    shown = capfd.readouterr()
    text = shown.err + shown.out + "\n".join(r.getMessage() for r in caplog.records)
    # the progress bar (Lightning's rich or tqdm bar) shows the objective while training
    assert "val/bpd:" in text or "val/bpd=" in text
    assert "Total params" in text and "encoder" in text  # Lightning's model summary
    assert "config of this run" in text and "latent_dim: 16" in text and "max_steps: 3" in text


@pytest.mark.slow
def test_a_run_that_never_measures_its_objective_says_so_and_fails_its_sweep(tmp_path):
    cfg = compose_cfg(overrides=["trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                                 "callbacks.fid=null", "test=false"], output_dir=tmp_path / "single")
    assert math.isnan(train(cfg))
    assert json.loads((tmp_path / "single" / "metrics.json").read_text())["objective"] == "not measured"
    result = sweep_cli(tmp_path / "sweep", "trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                       "callbacks.fid=null", "test=false", "trainer.enable_progress_bar=false")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 1 jobs of the sweep failed" in result.stdout + result.stderr
    failed = json.loads((tmp_path / "sweep" / "0" / "FAILED.json").read_text())
    assert failed["error"] == "ObjectiveNotMeasured" and "objective=val/bpd was never measured" in failed["message"]


def test_the_objective_follows_the_family():
    assert compose_cfg(overrides=["model=dcgan"]).objective == "val/fid_classifier"
    assert compose_cfg(overrides=["model=dcgan", "dataset=mnist"]).objective == "val/fid_inception"
    for model in ("vae", "glow", "pixelcnn"):
        assert compose_cfg(overrides=[f"model={model}"]).objective == "val/bpd"
    assert compose_cfg(overrides=["model=dcgan", "objective=val/is_x"]).objective == "val/is_x"  # command line wins
