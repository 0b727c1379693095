"""What makes a resumed run continue exactly where it stopped, and stop cleanly when warned.

The optimizer, schedulers, EMA average, loop counters, data-loader position (a
``StatefulDataLoader``) and callback states are Lightning's checkpoint. ``ResumeState`` adds the
random number generators; ``Preemption`` saves a checkpoint when the cluster warns that the job
is about to be stopped (SLURM's ``--signal``, submitit's ``signal_delay_s``) and hands over to
the scheduler's requeue.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from genlab.errors import Preempted
from genlab.resume import truncate_csv_history

log = logging.getLogger("genlab")


class ResumeState(pl.Callback):
    """Saves the random number generators' states with every checkpoint and puts them back as
    the checkpoint is loaded, so a resumed CPU run draws the same numbers as an uninterrupted one
    from wherever the checkpoint was written (a training step, the end of a validation, the end
    of training).

    What runs between loading and the first resumed step draws nothing from the global
    generators: Lightning isolates the sanity check's draws, and genlab's data loaders seed their
    workers from their own generator. (Restoring later, at the first training batch, was exact
    only for mid-epoch checkpoints: after a checkpoint written at the end of a validation, the
    next epoch's loader had drawn from the generator before the restore overwrote it.)
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self._resumed_at = 0  # the step of the checkpoint this fit resumes from

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors and plain numbers only: checkpoints load with weights_only=True
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state_dict["python"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # not the best checkpoint the test loads
            self._resumed_at = checkpoint["global_step"]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # What was logged after the checkpoint (everything, for a run started over) is logged
        # again; also the test values of a run killed after its test, whose fit has nothing
        # left to train (Lightning then calls no on_train_start).
        truncate_csv_history(self.output_dir, self._resumed_at)


class Preemption(pl.Callback):
    """On the warning signal: finish the current step, save ``last.ckpt``, mark the run
    preempted, then requeue the job.

    The signal handler only sets a flag; the checkpoint is written between steps, with every
    rank agreeing on the step. Requeueing is the scheduler's: the handler that was installed
    before genlab's (submitit's, in a job launched by Hydra's submitit launcher) runs next, and
    in a plain SLURM batch job ``scontrol requeue`` is called. Elsewhere the run just stops; the
    same command resumes it.
    """

    def __init__(self, checkpoint_path: Path, on_preempt: Callable[[], None], signum: int = signal.SIGUSR2) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.on_preempt = on_preempt
        self.signum = signum
        self.requested = False
        self._stop_message = ""
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received %s: the run checkpoints after this step and stops", signal.Signals(signum).name)
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self._previous = signal.signal(self.signum, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            log.warning("training runs outside the main thread: %s will not checkpoint the run",
                        signal.Signals(self.signum).name)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._stop_message or not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        trainer.save_checkpoint(self.checkpoint_path)
        self.on_preempt()
        self._stop_message = (
            f"the run was preempted at step {trainer.global_step} and checkpointed to {self.checkpoint_path}; "
            "re-run the same command to resume it (a SLURM job is requeued and resumes by itself)"
        )

    # Lightning logs the step's metrics after on_train_batch_end: the run stops at the next hook,
    # before another step or a validation the uninterrupted run would not have had at this point.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        if not self._stop_message:
            return
        for logger in trainer.loggers:
            logger.save()
        previous = self._previous
        self._restore_handler()
        if callable(previous):  # submitit's handler: pickles the job, requeues it and exits
            log.warning("%s; handing over to the requeue", self._stop_message)
            previous(self.signum, None)
        elif os.environ.get("SLURM_JOB_ID") and rank_zero_only.rank == 0:
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        raise Preempted(self._stop_message)
