"""genlab-train: fit a model, test its best checkpoint, return the objective metric."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genlab.cli import run_cli
from genlab.config import build_sampler, instantiate
from genlab.entry import build_callbacks, build_trainer, entry_point, finish_loggers, hydra_main, in_multirun
from genlab.errors import ConfigError, ObjectiveNotMeasured
from genlab.lock import claim

if TYPE_CHECKING:  # torch and Lightning are imported when a run starts: `genlab-train --help`
    import pytorch_lightning as pl  # and config errors answer without them

log = logging.getLogger("genlab")


@contextlib.contextmanager
def ddp_ranks_run_this_job(output_dir: Path) -> Iterator[None]:
    """Lightning starts the other DDP ranks by re-running this process's command line plus
    ``hydra.run.dir``. In a sweep (``-m``) that would start the whole sweep again in each rank:
    give them this job's own overrides and directory instead, as in a single run. Afterwards the
    process group and Lightning's environment variables go, so the next job of the sweep (in
    this same process) starts its own ranks."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, run_dir, environ = sys.argv, hydra_cfg.run.dir, dict(os.environ)
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = str(output_dir)
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)


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


def init_from_weights(model: pl.LightningModule, cfg: DictConfig) -> None:
    """``init_from=PATH``: start from the weights of a genlab checkpoint (fine-tuning), read the
    safe way (``genlab.checkpoint``), with this run's own optimizer, schedule, step 0 and metrics.
    Weights that do not fit the model this run builds are refused, naming both."""
    from genlab.checkpoint import StoredModel, read_checkpoint

    checkpoint = read_checkpoint(cfg.init_from, key="init_from")
    StoredModel.of(checkpoint, f"init_from={cfg.init_from}").check_fits(model, cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    log.info("starting from the weights of %s (init_from)", cfg.init_from)


def train(cfg: DictConfig) -> Optional[float]:
    """Build everything (each piece checked before any training), fit, test, report.

    Re-running the same command in the same run directory resumes it (``genlab.resume``).
    Nothing is written into the directory before the plan: a command that is refused, or a
    completed run, leaves it as it was.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from genlab.callbacks.run import ValidateAtEnd
    from genlab.resume import plan_start, reuse_logger_ids

    output_dir = Path(cfg.paths.output_dir)
    plan = plan_start(output_dir, cfg)
    if plan.action == "completed":
        value = plan.metrics.get("best", {}).get(cfg.objective, float("nan"))
        log.info("the run in %s is already completed (objective %s = %s): nothing to do",
                 output_dir, cfg.objective, value)
        return value
    claim(output_dir)  # this attempt's failure or interruption is recorded here from now on
    reuse_logger_ids(cfg, plan.previous)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = instantiate(cfg.model, "model")
    if plan.stored is not None:  # ckpt_path= or resume: weights of another size are refused before fit
        plan.stored.check_fits(model, cfg.model)
    model.check_trainer(cfg.trainer)
    if cfg.get("init_from") and plan.action == "new":  # a resumed run has its own weights
        init_from_weights(model, cfg)
    model.sampler = build_sampler(cfg.get("sampler"), model)
    callbacks = build_callbacks(cfg, datamodule)
    check_objective(cfg, model, callbacks)
    trainer, recorder = build_trainer(cfg, [*callbacks, ValidateAtEnd(cfg.objective)], output_dir)
    # ckpt_path= starts a new run from another run's state: that run's metric history stays there
    recorder.carry_history = plan.action == "resume"
    log.info("config of this run (config_resolved.yaml):\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    if plan.action == "resume":
        log.info("resuming the run in %s from %s", output_dir, plan.ckpt_path)
    with ddp_ranks_run_this_job(output_dir):
        trainer.fit(model, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
        if cfg.get("test"):
            checkpoint = trainer.checkpoint_callback
            best = isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path
            log.info("testing %s", f"the best checkpoint {best}" if best else "the final weights")
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if best else None, weights_only=True)
    recorder.finish("completed")
    finish_loggers(trainer)

    objective = recorder.best.get(cfg.objective)
    if objective is None:
        # Trained, but the metric a sweeper optimises was never measured (validation switched
        # off, or the run stopped by max_time): said in metrics.json; a sweep job fails with it.
        why = (f"objective={cfg.objective} was never measured (validation off or never reached: "
               f"trainer.limit_val_batches={cfg.trainer.get('limit_val_batches')}, "
               f"trainer.check_val_every_n_epoch={cfg.trainer.get('check_val_every_n_epoch')}); "
               f"logged metrics: {', '.join(sorted(recorder.final)) or 'none'}")
        recorder.finish("completed", objective="not measured")
        if in_multirun():
            raise ObjectiveNotMeasured(why)
        log.warning("%s", why)
        return float("nan")
    log.info("objective %s = %.6g (best); run directory %s", cfg.objective, objective, output_dir)
    return objective


@hydra_main("train")
def command(cfg: DictConfig) -> Optional[float]:
    return entry_point(train, ("dataset", "model", "sampler", "callbacks", "logger", "trainer"))(cfg)


def main() -> Optional[float]:
    """The genlab-train command."""
    return run_cli(command)


if __name__ == "__main__":
    main()
