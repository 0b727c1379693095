"""genlab-eval ckpt=PATH: FID and bits/dim of a checkpoint, written to metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from genlab.checkpoint import load_model, read_checkpoint, saved_config
from genlab.config import CONF_DIR, build_sampler, check_config, instantiate
from genlab.entry import build_trainer, entry_point, finish_loggers
from genlab.errors import ConfigError

log = logging.getLogger("genlab")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: use split=val or split=test")
    output_dir = Path(cfg.paths.output_dir)
    checkpoint = read_checkpoint(cfg.ckpt)
    saved = saved_config(checkpoint, cfg)
    # Evaluate the data and model exactly as trained; this command picks sampler and metrics.
    with open_dict(cfg):
        cfg.dataset, cfg.model = saved.dataset, saved.model
    check_config(cfg, ("dataset", "model", "callbacks"))  # they refer to the saved dataset
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = load_model(checkpoint, saved)
    model.sampler = build_sampler(cfg.get("sampler") or saved.get("sampler"), model)
    trainer, recorder = build_trainer(cfg, datamodule, output_dir)

    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule)
    recorder.finish("completed")
    finish_loggers(trainer)
    log.info("metrics of %s: %s (in %s)", cfg.ckpt, recorder.final, output_dir / "metrics.json")
    return recorder.final


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    return entry_point(evaluate, ("sampler", "logger", "trainer"))(cfg)


if __name__ == "__main__":
    main()
