"""What every run records: metrics.json (final and best values), its config in checkpoints, and
``last.ckpt``, its newest state."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

import genlab
from genlab.utils import atomic_write_json

HIGHER_IS_BETTER = {"acc", "accuracy", "isc", "is", "precision", "recall"}


def higher_is_better(name: str) -> bool:
    """By the metric's name tokens: ``val/isc_inception`` yes, ``train/disc_loss`` no."""
    return not HIGHER_IS_BETTER.isdisjoint(re.split(r"[/_.\-]", name.lower()))


class RunRecorder(pl.Callback):
    """Keeps the final and best value of every logged metric and writes ``metrics.json``.

    Also stores the resolved config in every checkpoint, which is what makes a checkpoint a
    genlab checkpoint that ``genlab-eval`` and ``genlab-sample`` can rebuild.
    """

    def __init__(self, output_dir: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.config = config
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.status = "running"
        #: more about the status, e.g. the signal that interrupted the run
        self.status_details: dict[str, Any] = {}
        #: metrics that do not exist for this model, with the reason (e.g. bits/dim for a GAN)
        self.not_applicable: dict[str, str] = {}
        #: the earlier runs the model is built on (``GenerativeModel.stands_on``)
        self.stands_on: dict[str, Any] = {}

    def _collect(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            if not math.isfinite(value):
                continue
            self.final[name] = value
            old = self.best.get(name)
            better = max if self._higher_is_better(name) else min
            self.best[name] = value if old is None else better(old, value)
        self.write()

    def _higher_is_better(self, name: str) -> bool:
        if name == self.config.get("objective"):  # the config says which way its objective goes
            return self.config.get("objective_mode") == "max"
        return higher_is_better(name)

    @rank_zero_only
    def write(self) -> None:
        data: dict[str, Any] = {"status": self.status, **self.status_details, "final": self.final, "best": self.best}
        if self.not_applicable:
            data["not_applicable"] = self.not_applicable
        if self.stands_on:
            data["stands_on"] = self.stands_on
        atomic_write_json(self.path, data)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.stands_on = pl_module.stands_on()
        if pl_module.likelihood is None:
            self.not_applicable["bpd"] = f"the {pl_module.family} family has no likelihood"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)

    def finish(self, status: str = "completed", **details: Any) -> None:
        self.status, self.status_details = status, details
        self.write()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["genlab"] = {
            "version": genlab.__version__,
            "family": pl_module.family,
            "config": self.config,
            "metrics": {"final": dict(self.final), "best": dict(self.best)},
            "stands_on": self.stands_on,
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resuming a fit carries the history on; testing a checkpoint must not roll it back.
        metrics = checkpoint.get("genlab", {}).get("metrics")
        if metrics and trainer.state.fn == "fit":
            self.final.update(metrics["final"])
            self.best.update(metrics["best"])


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, the run's newest state: the one checkpoint named "last", and the one a
    re-run resumes from.

    Lightning's ModelCheckpoint writes it every ``every_n_train_steps`` steps. This adds a save
    wherever the best checkpoint may be written (at the end of a validation, or at the end of
    the training epoch when a validation runs after every epoch: Lightning's choice for every
    ModelCheckpoint), after the ``checkpoint`` callback, so it holds the new best too; and one at
    the end of training, so that ``last.ckpt`` of a finished run holds the final weights and a
    run killed while testing resumes straight into its test. Each save replaces the file: no
    ``last-vN.ckpt`` copies. The ``checkpoint`` callback (the best) writes no "last".

    A step save that falls on an epoch's last batch moves to the next step: a checkpoint taken
    after that batch but before the epoch's end (its validation, its loader's end) does not
    resume exactly, one taken inside an epoch does.
    """

    def __init__(self, dirpath: str, every_n_train_steps: Optional[int] = None) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)
        self._deferred = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = self._deferred or (self._every_n_train_steps >= 1
                                 and trainer.global_step % self._every_n_train_steps == 0)
        if not due:
            return
        self._deferred = trainer.is_last_batch
        if not self._deferred:
            self._save_newest(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_newest(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._save_newest(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_newest(trainer)

    def _save_newest(self, trainer: pl.Trainer) -> None:
        # also when this step was saved already (a step checkpoint before the validation): the
        # state now holds more (the validation's results, the end of training)
        if trainer.state.fn == TrainerFn.FITTING and not (trainer.sanity_checking or trainer.fast_dev_run) \
                and trainer.global_step > 0:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
