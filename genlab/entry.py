"""What the three entry points share: building the trainer and reporting failures."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from genlab.checks import one_line
from genlab.config import CONF_DIR, build_named, check_config
from genlab.errors import ConfigError, GenlabError, Interrupted, Preempted, RunDirectoryInUse
from genlab.lock import RunDirectory, lock_run_directory
from genlab.threads import apply_cpu_threads
from genlab.trust import command_line_is_trusted
from genlab.utils import atomic_write_json, atomic_write_text, global_rank, on_rank_zero

if TYPE_CHECKING:  # torch and Lightning are imported where a run needs them: `--help` and a
    import pytorch_lightning as pl  # config error answer without them

    from genlab.callbacks.run import RunRecorder

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
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from genlab.callbacks.resume import Preemption, ResumeState
    from genlab.callbacks.run import RunRecorder
    from genlab.checkpoint import AtomicCheckpointIO

    loggers = build_named(cfg.get("logger"), "logger")
    container = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(container)
    if not loggers:  # Lightning refuses a learning-rate monitor with nowhere to log
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    _write_resolved_config(output_dir, container)
    recorder = RunRecorder(output_dir, container)
    preemption = Preemption(output_dir / "checkpoints" / "last.ckpt",
                            lambda status, signal_name: recorder.finish(status, signal=signal_name))
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


@on_rank_zero
def _write_resolved_config(output_dir: Path, container: dict) -> None:
    """Every value as this run used it (.hydra/config.yaml keeps the interpolations)."""
    atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(container))


def finish_loggers(trainer: pl.Trainer) -> None:
    """Flush W&B so its (offline) run files are complete when the entry point returns."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers) and global_rank() == 0:
        import wandb

        wandb.finish()


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _close_wandb(exit_code: int) -> None:
    """Close an open W&B run (the next job of a sweep in this process gets its own)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=exit_code)
        except Exception as finish_err:  # never hide the job's own error behind this one
            log.warning("could not close the W&B run: %s", finish_err)


@on_rank_zero
def _mark_failed(output_dir: Path, err: BaseException) -> None:
    """FAILED.json with the error; a metrics.json written before the failure says so too; an
    open W&B run is closed as failed."""
    atomic_write_json(
        output_dir / "FAILED.json",
        {"status": "failed", "error": type(err).__name__, "message": str(err),
         "traceback": traceback.format_exc()},
    )
    metrics = output_dir / "metrics.json"
    if metrics.is_file():
        atomic_write_json(metrics, {**json.loads(metrics.read_text()), "status": "failed"})
    _close_wandb(1)


@on_rank_zero
def _mark_interrupted(output_dir: Path, err: Interrupted) -> None:
    """metrics.json says ``interrupted`` and by which signal (the run is resumable)."""
    metrics = output_dir / "metrics.json"
    try:
        data = json.loads(metrics.read_text())
    except (OSError, ValueError):  # interrupted before the run recorded anything
        data = {"final": {}, "best": {}}
    if data.get("status") == "completed":  # the signal came while a finished run closed its loggers
        log.warning("%s after the run had completed: it stays completed", err)
    else:
        atomic_write_json(metrics, {**data, "status": "interrupted", "signal": err.signal_name})
        log.warning("%s", err)
    _close_wandb(128 + err.signum)


def _record(run_dir: RunDirectory, err: BaseException) -> None:
    """Record why the attempt ended, in a directory it owns only: a refused command leaves the
    run that is there untouched."""
    if not run_dir.owned or isinstance(err, (SystemExit, RunDirectoryInUse, Preempted)):
        return  # SystemExit: submitit's requeue after a preemption checkpoint, not a failure
    if isinstance(err, Interrupted):
        _mark_interrupted(run_dir.path, err)
    else:
        _mark_failed(run_dir.path, err)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Interrupted`` wherever the process is (a training run
    checkpoints first: ``Preemption`` takes the signals over while it trains)."""

    def interrupt(signum: int, frame: Any) -> NoReturn:
        raise Interrupted(signum)

    from genlab.callbacks.resume import STOP_SIGNALS

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:  # e.g. SIGINT of a background job
            continue
        with contextlib.suppress(ValueError):  # not the main thread: signals cannot be caught
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def report_error(err: GenlabError) -> NoReturn:
    """One ``genlab: error:`` line on stderr and exit status 1."""
    print(f"genlab: error: {one_line(err)}", file=sys.stderr)
    sys.exit(1)


def _exit_interrupted(err: Interrupted | KeyboardInterrupt) -> NoReturn:
    """Exit status 128 + the signal number; a sweep also records the jobs that never ran."""
    if not isinstance(err, Interrupted):
        err = Interrupted(signal.SIGINT)
    if in_multirun() and global_rank() == 0:
        from hydra.core.hydra_config import HydraConfig

        from genlab.report import record_interrupted_sweep

        hydra_cfg = HydraConfig.get()
        stopped = record_interrupted_sweep(Path(hydra_cfg.sweep.dir), str(hydra_cfg.job.num), err.signal_name)
        log.error("%s", stopped)
        err = Interrupted(err.signum, f"{err}\ngenlab: {stopped}")
    print(f"genlab: {err}", file=sys.stderr)
    sys.exit(128 + err.signum)


def entry_point(fn: Callable[[DictConfig], Any], sections: tuple[str, ...]) -> Callable[[DictConfig], Any]:
    """Wrap a plain ``fn(cfg)`` for ``hydra.main``: take the run directory's lock, check the
    config, run; on an error record ``FAILED.json`` in the run directory (so it never looks like
    a result), if the directory is this attempt's own (new, or a run it resumed).

    A single run prints genlab's own errors as one clear line (exit status 1) and lets any other
    error raise. A job of a sweep (multirun) that fails with any Exception is recorded, logged,
    and returns None, so that the sweep runs on: Hydra's basic sweeper starts the next job and
    Optuna's sweeper records a failed trial. (None, not NaN: optuna 2.10 cannot mark a trial
    that returned NaN as failed and the sweep would crash.) The sweep's summary and exit status
    come from ``genlab.report.SweepSummary`` at its end. SIGTERM and SIGINT stop a run, or a
    whole sweep, with exit status 128 + the signal number (``Interrupted``).
    """

    @functools.wraps(fn)
    def run_job(cfg: DictConfig) -> Any:
        output_dir = Path(cfg.paths.output_dir)
        owned = False
        try:
            with interrupt_on_signals():
                run_dir = lock_run_directory(output_dir)
                try:
                    check_config(cfg, sections)
                    apply_cpu_threads(cfg)
                    result = fn(cfg)
                except BaseException as err:
                    _record(run_dir, err)
                    raise
                finally:
                    owned = run_dir.owned
                    run_dir.release()
        except (Interrupted, KeyboardInterrupt) as err:
            _exit_interrupted(err)
        except Exception as err:
            if in_multirun():
                if owned:
                    log.error("job failed, the sweep runs on: %s: %s (%s)", type(err).__name__, err, output_dir,
                              exc_info=not isinstance(err, GenlabError))
                else:  # the log file in the directory of a run this job does not own stays as it was
                    if not isinstance(err, GenlabError):
                        traceback.print_exc()
                    print(f"genlab: error: job refused, the sweep runs on: {one_line(err)} ({output_dir})",
                          file=sys.stderr)
                return None
            if not isinstance(err, GenlabError):
                raise
            if owned:  # the log file of a run this attempt does not own stays as it was
                log.error("%s", err)
            report_error(err)
        if owned and global_rank() == 0:  # a later success supersedes an earlier failure here
            (output_dir / "FAILED.json").unlink(missing_ok=True)
        if in_multirun() and isinstance(result, float) and math.isnan(result):
            return None  # no objective measured: a failed trial for Optuna, not a crashed study
        return result

    return run_job


def hydra_main(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``hydra.main`` over genlab's conf/ for an entry point's ``main``. Before Hydra reads any
    config, the directories the command line adds (``--config-dir``, ``--config-path``,
    ``hydra.searchpath``) are checked: Hydra builds callbacks, launchers and sweepers from them
    before genlab's code runs, so a ``_target_`` off genlab's allow-list is refused first."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        run = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)

        @functools.wraps(task)
        def main(cfg: Optional[DictConfig] = None) -> Any:
            if cfg is None:
                command_line_is_trusted(inspect.getfile(task))
            return run(cfg)

        return main

    return decorate
