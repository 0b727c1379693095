"""genlab-train: fit a model, test its best checkpoint, return the objective metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from genlab.callbacks.run import RunRecorder
from genlab.config import CONF_DIR, build_named, build_sampler, instantiate
from genlab.entry import build_trainer, entry_point, finish_loggers
from genlab.errors import ConfigError

log = logging.getLogger("genlab")


def train(cfg: DictConfig) -> Optional[float]:
    """Build everything (each piece checked before any training), fit, test, report."""
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = instantiate(cfg.model, "model")
    model.sampler = build_sampler(cfg.get("sampler"), model)
    callbacks = build_named(cfg.get("callbacks"), "callbacks")
    for callback in callbacks:
        if hasattr(callback, "check"):
            callback.check(datamodule)
    recorder = RunRecorder(output_dir, OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, [*callbacks, recorder], output_dir)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("test"):
        checkpoint = trainer.checkpoint_callback
        best = isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path
        log.info("testing %s", f"the best checkpoint {best}" if best else "the final weights")
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None)
    recorder.finish("completed")
    finish_loggers(trainer)

    objective = recorder.best.get(cfg.objective)
    if objective is None:
        raise ConfigError(
            f"objective={cfg.objective!r} was never logged; logged metrics are "
            f"{sorted(recorder.final)}. Set objective= to one of them."
        )
    log.info("objective %s = %.6g (best); run directory %s", cfg.objective, objective, output_dir)
    return objective


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    return entry_point(train, ("dataset", "model", "sampler", "callbacks", "logger", "trainer"))(cfg)


if __name__ == "__main__":
    main()
