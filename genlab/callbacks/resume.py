"""What makes a resumed run continue exactly where it stopped, and stop cleanly when warned.

The optimizer, schedulers, EMA average, loop counters, data-loader position (a
``StatefulDataLoader``) and callback states are Lightning's checkpoint. ``ResumeState`` adds the
random number generators; ``Preemption`` saves a checkpoint when the cluster warns that the job
is about to be stopped (SLURM's ``--signal``, submitit's ``signal_delay_s``) and hands over to
the scheduler's requeue, or when the run is told to stop (SIGTERM, SIGINT).
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

from genlab.errors import Interrupted, Preempted
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


#: the cluster's warning before it requeues the job (SLURM's ``--signal``, submitit)
REQUEUE_SIGNALS = (signal.SIGUSR2,)
#: stop the run: scancel, a time limit without ``--signal``, docker stop, Kubernetes, Ctrl+C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption(pl.Callback):
    """On a signal: finish the current step, save ``last.ckpt``, record the run, then stop.

    * SIGUSR2 (the warning before a requeue): the run is marked ``preempted`` and handed to the
      scheduler's requeue: the handler that was installed before genlab's (submitit's, in a job
      launched by Hydra's submitit launcher) runs next, and in a plain SLURM batch job
      ``scontrol requeue`` is called. Elsewhere the run just stops; the same command resumes it.
    * SIGTERM and SIGINT: the run is marked ``interrupted`` with the signal and ``Interrupted`` is
      raised; the entry point exits with 128 + the signal number. A stop signal while a requeue
      is under way is ignored (SLURM sends SIGTERM when it requeues); a second stop signal stops
      at once, without a checkpoint.

    The handlers only set a flag; the checkpoint is written between steps, with every rank
    agreeing on the step. A signal during a validation acts after it, at the next step (a step
    checkpoint resumes exactly) or at the end of training. While training, this replaces
    Lightning's own SIGTERM handling, which stops after the step without a checkpoint and exits
    with status 0; outside training Lightning's handler stays, and calls the entry point's.
    """

    def __init__(self, checkpoint_path: Path, on_stop: Callable[[str, str], None]) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        #: called with the status (preempted or interrupted) and the signal's name
        self.on_stop = on_stop
        self._requeue = 0  # the signal received, per kind (0: none)
        self._halt = 0
        self._decided = 0  # the signal the run stops for, once checkpointed
        self._stop_message = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum in REQUEUE_SIGNALS:
            self._requeue = self._requeue or signum
        elif self._requeue or self._decided in REQUEUE_SIGNALS:
            log.warning("received %s while the job is being requeued: ignored", name)
            return
        elif self._halt:
            log.warning("received %s again: stopping now, without a checkpoint", name)
            raise Interrupted(signum, f"the run was stopped by a second {name}, without a checkpoint; "
                                      "re-run the same command to resume from the last one")
        else:
            self._halt = signum
        log.warning("received %s: the run checkpoints after this step and stops", name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in (*REQUEUE_SIGNALS, *STOP_SIGNALS):
            if signal.getsignal(signum) == signal.SIG_IGN:  # e.g. SIGINT of a background job
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                log.warning("training runs outside the main thread: %s will not checkpoint the run",
                            signal.Signals(signum).name)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _agree(self, trainer: pl.Trainer) -> int:
        """The signal to stop for, the same on every rank (a requeue wins over a stop); 0: none."""
        received = torch.tensor([self._requeue, self._halt], device=trainer.strategy.root_device)
        requeue, halt = trainer.strategy.reduce(received, reduce_op="max").tolist()
        return int(requeue or halt)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # at an epoch's last batch the checkpoint waits for the next step (or the end of
        # training): one taken before the epoch's end does not resume exactly (LastCheckpoint)
        if not self._decided and not trainer.is_last_batch:
            self._checkpoint_if_signalled(trainer)

    def _checkpoint_if_signalled(self, trainer: pl.Trainer) -> None:
        signum = self._agree(trainer)
        if not signum:
            return
        trainer.save_checkpoint(self.checkpoint_path)
        requeue = signum in REQUEUE_SIGNALS
        name = signal.Signals(signum).name
        self.on_stop("preempted" if requeue else "interrupted", name)
        self._decided = signum
        how = (f"preempted at step {trainer.global_step}" if requeue
               else f"interrupted by {name} at step {trainer.global_step}")
        self._stop_message = (
            f"the run was {how} and checkpointed to {self.checkpoint_path}; re-run the same command to "
            f"resume it{' (a SLURM job is requeued and resumes by itself)' if requeue else ''}"
        )

    # Lightning logs the step's metrics after on_train_batch_end: the run stops at the next hook,
    # before another step or a validation the uninterrupted run would not have had at this point.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._decided:  # a signal during the last validation: stop before the test phase
            self._checkpoint_if_signalled(trainer)
        self._stop(trainer)
        self._restore_handlers()

    def _stop(self, trainer: pl.Trainer) -> None:
        if not self._stop_message:
            return
        for logger in trainer.loggers:
            logger.save()
        previous = self._previous.get(self._decided)
        self._restore_handlers()
        if self._decided not in REQUEUE_SIGNALS:
            raise Interrupted(self._decided, self._stop_message)
        if callable(previous):  # submitit's handler: pickles the job, requeues it and exits
            log.warning("%s; handing over to the requeue", self._stop_message)
            previous(self._decided, None)
        elif os.environ.get("SLURM_JOB_ID") and rank_zero_only.rank == 0:
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        raise Preempted(self._stop_message)
