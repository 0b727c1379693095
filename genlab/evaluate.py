"""genlab-eval ckpt=PATH: FID and bits/dim of a checkpoint, written to metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from genlab.checkpoint import load_model, read_checkpoint, with_trained_run
from genlab.cli import run_cli
from genlab.config import build_sampler, check_config, instantiate
from genlab.entry import build_callbacks, build_trainer, entry_point, finish_loggers, hydra_main
from genlab.errors import ConfigError

log = logging.getLogger("genlab")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: use split=val or split=test")
    output_dir = Path(cfg.paths.output_dir)
    checkpoint = read_checkpoint(cfg.ckpt)
    cfg = with_trained_run(checkpoint, cfg)
    check_config(cfg, ("dataset", "model", "sampler", "callbacks"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = load_model(checkpoint, cfg.model, f"ckpt={cfg.ckpt}")
    model.sampler = build_sampler(cfg.sampler, model)
    trainer, recorder = build_trainer(cfg, build_callbacks(cfg, datamodule), output_dir)

    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule)
    recorder.finish("completed")
    finish_loggers(trainer)
    log.info("metrics of %s: %s (in %s)", cfg.ckpt, recorder.final, output_dir / "metrics.json")
    return recorder.final


@hydra_main("eval")
def command(cfg: DictConfig) -> dict[str, float]:
    return entry_point(evaluate, ("sampler", "logger", "trainer"))(cfg)


def main() -> dict[str, float]:
    """The genlab-eval command."""
    return run_cli(command)


if __name__ == "__main__":
    main()
