"""genlab-train: fit a model, test its best checkpoint, return the objective metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from genlab.config import CONF_DIR, build_sampler, instantiate
from genlab.entry import build_callbacks, build_trainer, entry_point, finish_loggers
from genlab.errors import ConfigError, RunDirectoryInUse

log = logging.getLogger("genlab")


def refuse_to_overwrite(output_dir: Path, resuming: bool) -> None:
    """A finished or running run's results are never overwritten by a new one."""
    if resuming or rank_zero_only.rank != 0:
        return
    checkpoints = output_dir / "checkpoints"
    found = [p.name for p in (output_dir / "metrics.json", checkpoints) if p.is_file()]
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append("checkpoints/")
    if found:
        raise RunDirectoryInUse(
            f"the run directory {output_dir} already holds a run ({', '.join(found)}); start a "
            "new one (leave hydra.run.dir to its default) or resume it with ckpt_path=PATH"
        )


def check_objective(cfg: DictConfig, model: pl.LightningModule, callbacks: list[pl.Callback]) -> None:
    """The objective (best checkpoint, sweeper value) must be a metric this run logs."""
    if cfg.objective_mode not in ("min", "max"):
        raise ConfigError(f"objective_mode={cfg.objective_mode!r}: use min or max")
    measured = {f"{stage}/{name}" for stage in ("train", "val") for name in model.step_metrics}
    for callback in callbacks:
        measured.update(callback.metric_names(model) if hasattr(callback, "metric_names") else [])
    if cfg.objective not in measured:
        raise ConfigError(
            f"objective={cfg.objective} is not measured by this run; it measures "
            f"{', '.join(sorted(measured))}. Set objective= to one of them (or enable the callback "
            "that measures it)."
        )


def train(cfg: DictConfig) -> Optional[float]:
    """Build everything (each piece checked before any training), fit, test, report."""
    output_dir = Path(cfg.paths.output_dir)
    refuse_to_overwrite(output_dir, resuming=cfg.get("ckpt_path") is not None)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = instantiate(cfg.model, "model")
    model.check_trainer(cfg.trainer)
    model.sampler = build_sampler(cfg.get("sampler"), model)
    callbacks = build_callbacks(cfg, datamodule)
    check_objective(cfg, model, callbacks)
    trainer, recorder = build_trainer(cfg, callbacks, output_dir)

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
        # The run is complete, but the metric a sweeper optimises was never measured (e.g. no
        # validation ran): NaN makes Optuna mark the trial failed rather than crash the sweep.
        log.warning(
            "objective=%s was never logged (did a validation run? trainer.check_val_every_n_epoch=%s); "
            "logged metrics: %s", cfg.objective, cfg.trainer.get("check_val_every_n_epoch"), sorted(recorder.final))
        return float("nan")
    log.info("objective %s = %.6g (best); run directory %s", cfg.objective, objective, output_dir)
    return objective


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    return entry_point(train, ("dataset", "model", "sampler", "callbacks", "logger", "trainer"))(cfg)


if __name__ == "__main__":
    main()
