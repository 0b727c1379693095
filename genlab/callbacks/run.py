"""What every run records: metrics.json (final and best values), history.json (its learning
curves), its config in checkpoints, and ``last.ckpt``, its newest state."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

import genlab
from genlab.utils import atomic_write_json, atomic_write_text

HIGHER_IS_BETTER = {"acc", "accuracy", "isc", "is", "precision", "recall"}


def higher_is_better(name: str) -> bool:
    """By the metric's name tokens: ``val/isc_inception`` yes, ``train/disc_loss`` no."""
    return not HIGHER_IS_BETTER.isdisjoint(re.split(r"[/_.\-]", name.lower()))


class RunRecorder(pl.Callback):
    """Keeps the final and best value of every logged metric and writes ``metrics.json``, and
    the learning curves genlab-report draws, whatever the logger, in ``history.json``: a row of
    training metrics every ``log_every_n_steps`` steps and at each epoch's last batch, and one
    for each validation and test, each with its step and epoch. Rows are taken before any
    checkpoint of the same moment is written, so a resumed run has the history it would have had.

    Also stores the resolved config in every checkpoint, which is what makes a checkpoint a
    genlab checkpoint that ``genlab-eval`` and ``genlab-sample`` can rebuild.
    """

    def __init__(self, output_dir: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.history_path = Path(output_dir) / "history.json"
        self.history: list[dict[str, float]] = []
        self.config = config
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.status = "running"
        #: more about the status, e.g. the signal that interrupted the run
        self.status_details: dict[str, Any] = {}
        #: metrics that do not exist for this model, with the reason (e.g. bits/dim for a GAN)
        self.not_applicable: dict[str, str] = {}
        #: a resumed run carries the history of its checkpoint on; a new run (ckpt_path=) does not
        self.carry_history = True
        #: the earlier runs the model is built on (``GenerativeModel.stands_on``)
        self.stands_on: dict[str, Any] = {}

    def _collect(self, trainer: pl.Trainer, stage: Optional[str] = None) -> None:
        """Final and best values, and (for ``stage`` val or test) a row of that split's metrics."""
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
        if stage is not None:
            self._add_row(trainer, stage)
        self.write()

    def _add_row(self, trainer: pl.Trainer, stage: str) -> None:
        """A history row of the metrics of ``stage`` (train: all but val/ and test/, which keep
        their last values in callback_metrics)."""
        row = {}
        for name, value in trainer.callback_metrics.items():
            split = name.split("/", 1)[0] if name.startswith(("val/", "test/")) else "train"
            if split == stage and math.isfinite(float(value)):
                row[name] = float(value)
        if row:
            self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **row})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        logging_step = step % trainer.log_every_n_steps == 0 or trainer.is_last_batch
        if logging_step and not (self.history and self.history[-1]["step"] == step):  # once (accumulation)
            self._add_row(trainer, "train")

    def _higher_is_better(self, name: str) -> bool:
        if name == self.config.get("objective"):  # the config says which way its objective goes
            return self.config.get("objective_mode") == "max"
        return higher_is_better(name)

    @rank_zero_only
    def write(self) -> None:
        data: dict[str, Any] = {"status": self.status, **self.status_details, "final": self.final, "best": self.best}
        if self.not_applicable:
            data["not_applicable"] = self.not_applicable
        rows = ",\n".join(json.dumps(row, sort_keys=True) for row in self.history)  # a row a line: it grows long
        atomic_write_text(self.history_path, f"[\n{rows}\n]\n" if rows else "[]\n")
        if self.stands_on:
            data["stands_on"] = self.stands_on
        atomic_write_json(self.path, data)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.stands_on = pl_module.stands_on()
        if pl_module.likelihood is None:
            self.not_applicable["bpd"] = f"the {pl_module.family} family has no likelihood"
        elif pl_module.likelihood_given:
            self.not_applicable["bpd"] = (f"the {pl_module.family} family's likelihood is given the "
                                          f"{pl_module.likelihood_given}: see {pl_module.bpd_name}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer, "test")

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
            "metrics": {"final": dict(self.final), "best": dict(self.best), "history": list(self.history)},
            "stands_on": self.stands_on,
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resuming a fit carries the history on; testing a checkpoint must not roll it back.
        metrics = checkpoint.get("genlab", {}).get("metrics")
        if metrics and trainer.state.fn == "fit" and self.carry_history:
            self.final.update(metrics["final"])
            self.best.update(metrics["best"])
            self.history = list(metrics.get("history", []))


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


class ValidateAtEnd(pl.Callback):
    """A run about to end without ever measuring its objective validates once at its last step.

    Lightning validates after every ``check_val_every_n_epoch``-th epoch only: a short run
    (``trainer.max_steps=60`` with the default of every 10 epochs) would end with no objective,
    no best checkpoint and no samples. At the last step (``max_steps`` reached, or the last batch
    of the last epoch) this asks Lightning for the validation it runs when a run is stopped
    early. ``trainer.limit_val_batches=0`` (validation off) is left alone.
    """

    def __init__(self, objective: str) -> None:
        self.objective = objective

    def _measured(self, trainer: pl.Trainer) -> bool:
        if self.objective in trainer.callback_metrics:
            return True
        # a resumed run: its best checkpoint callback restored the best value (same run directory only)
        return any(isinstance(cb, ModelCheckpoint) and cb.monitor == self.objective and cb.best_model_score is not None
                   for cb in trainer.callbacks)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.enable_validation or self._measured(trainer):
            return
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        last_step = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        last_epoch = trainer.is_last_batch and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs
        if last_step or last_epoch:
            trainer.check_val_every_n_epoch = 1  # this epoch validates ...
            trainer.should_stop = True  # ... at this batch (Lightning: a stopped run validates)
