"""What the three entry points share: building the trainer and reporting failures."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from genlab.callbacks.resume import Preemption, ResumeState
from genlab.callbacks.run import RunRecorder
from genlab.checkpoint import AtomicCheckpointIO
from genlab.checks import one_line
from genlab.config import build_named, check_config
from genlab.errors import ConfigError, GenlabError, Preempted, RunDirectoryInUse
from genlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger("genlab")


def build_callbacks(cfg: DictConfig, datamodule: Any) -> list[pl.Callback]:
    """The callbacks of ``cfg.callbacks``, each checked against the data before any work."""
    callbacks = build_named(cfg.get("callbacks"), "callbacks")
    for callback in callbacks:
        if hasattr(callback, "check"):
            callback.check(datamodule)
    return callbacks


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], output_dir: Path
) -> tuple[pl.Trainer, RunRecorder]:
    """A Lightning Trainer from ``cfg.trainer`` (passed straight through) with the callbacks,
    the loggers of ``cfg.logger`` and the run recorder that writes metrics.json."""
    loggers = build_named(cfg.get("logger"), "logger")
    container = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(container)
    if not loggers:  # Lightning refuses a learning-rate monitor with nowhere to log
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    _write_resolved_config(output_dir, container)
    recorder = RunRecorder(output_dir, container)
    preemption = Preemption(output_dir / "checkpoints" / "last.ckpt", lambda: recorder.finish("preempted"))
    try:  # check_trainer checked the keys and the hardware; the whole Trainer may still refuse some
        trainer = pl.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            callbacks=[ResumeState(output_dir), *callbacks, recorder, preemption],
            logger=loggers or False,
            default_root_dir=str(output_dir),
            plugins=[AtomicCheckpointIO()],
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"Lightning refuses the trainer.* settings: {one_line(err)}") from err
    return trainer, recorder


@rank_zero_only
def _write_resolved_config(output_dir: Path, container: dict) -> None:
    """Every value as this run used it (.hydra/config.yaml keeps the interpolations)."""
    atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(container))


def finish_loggers(trainer: pl.Trainer) -> None:
    """Flush W&B so its (offline) run files are complete when the entry point returns."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers) and rank_zero_only.rank == 0:
        import wandb

        wandb.finish()


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@rank_zero_only
def _mark_failed(output_dir: Path, err: BaseException) -> None:
    """FAILED.json with the error; a metrics.json written before the failure says so too; an
    open W&B run is closed as failed (the next job of a sweep in this process gets its own)."""
    atomic_write_json(
        output_dir / "FAILED.json",
        {"status": "failed", "error": type(err).__name__, "message": str(err),
         "traceback": traceback.format_exc()},
    )
    metrics = output_dir / "metrics.json"
    if metrics.is_file():
        atomic_write_json(metrics, {**json.loads(metrics.read_text()), "status": "failed"})
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=1)
        except Exception as finish_err:  # never hide the job's own error behind this one
            log.warning("could not close the W&B run: %s", finish_err)


def entry_point(fn: Callable[[DictConfig], Any], sections: tuple[str, ...]) -> Callable[[DictConfig], Any]:
    """Wrap a plain ``fn(cfg)`` for ``hydra.main``: check the config first; on any error record
    ``FAILED.json`` in the run directory (so it never looks like a result).

    A single run prints genlab's own errors as one clear line (exit status 1) and lets any other
    error raise. A job of a sweep (multirun) that fails with any Exception is recorded, logged,
    and returns None, so that the sweep runs on: Hydra's basic sweeper starts the next job and
    Optuna's sweeper records a failed trial. (None, not NaN: optuna 2.10 cannot mark a trial
    that returned NaN as failed and the sweep would crash.) The sweep's summary and exit status
    come from ``genlab.report.SweepSummary`` at its end.
    """

    @functools.wraps(fn)
    def run(cfg: DictConfig) -> Any:
        output_dir = Path(cfg.paths.output_dir)
        try:
            check_config(cfg, sections)
            result = fn(cfg)
        except Exception as err:
            # a refused run directory is not this run's failure; a preempted run is resumable
            if not isinstance(err, (RunDirectoryInUse, Preempted)):
                _mark_failed(output_dir, err)
            if in_multirun():
                log.error("job failed, the sweep runs on: %s: %s (%s)", type(err).__name__, err, output_dir,
                          exc_info=not isinstance(err, GenlabError))
                return None
            if not isinstance(err, GenlabError):
                raise
            log.error("%s", err)
            print(f"genlab: error: {one_line(err)}", file=sys.stderr)
            sys.exit(1)
        except SystemExit:  # submitit's requeue after a preemption checkpoint: not a failure
            raise
        except BaseException as err:  # interrupted: recorded, and the sweep stops too
            _mark_failed(output_dir, err)
            raise
        if rank_zero_only.rank == 0:  # a later success supersedes an earlier failure here
            (output_dir / "FAILED.json").unlink(missing_ok=True)
        if in_multirun() and isinstance(result, float) and math.isnan(result):
            return None  # no objective measured: a failed trial for Optuna, not a crashed study
        return result

    return run
