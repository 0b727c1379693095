"""The W&B run starts beside the first training steps: its config is recorded, the first use of
the run waits for it, and an error in starting it reaches the code that uses the run."""

import threading

import pytest

from genlab.loggers import WANDB_START_THREAD, BackgroundWandbLogger, wait_for_wandb_start


def test_the_run_started_in_the_background_holds_the_config(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = BackgroundWandbLogger(save_dir=str(tmp_path), offline=True, project="t", id="bgstart1")
    logger.start_in_background({"model": {"latent_dim": 7}, "seed": 3})
    assert logger._starting is not None and logger._starting.name == WANDB_START_THREAD
    run = logger.experiment  # a stand-in while it starts; using it waits for the start
    try:
        assert logger.__getstate__()["_starting"] is None  # picklable for spawned processes: the run exists
        assert run.id == "bgstart1" and run.config["seed"] == 3 and run.config["model"]["latent_dim"] == 7
        assert not any(t.name == WANDB_START_THREAD for t in threading.enumerate())
        logger.log_metrics({"train/loss": 1.5}, step=1)
    finally:
        wandb.finish()


def test_an_error_in_starting_the_run_is_raised_where_the_run_is_used(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = BackgroundWandbLogger(save_dir=str(tmp_path), offline=True, project="t", id="bad/id")  # W&B refuses it
    logger.start_in_background({"seed": 3})
    wait_for_wandb_start()
    with pytest.raises(wandb.errors.UsageError, match="cannot contain the characters"):
        logger.log_metrics({"train/loss": 1.5}, step=1)
