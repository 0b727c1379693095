"""What every run records: metrics.json (final and best values) and its config in checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
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
        atomic_write_json(self.path, data)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
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
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resuming a fit carries the history on; testing a checkpoint must not roll it back.
        metrics = checkpoint.get("genlab", {}).get("metrics")
        if metrics and trainer.state.fn == "fit":
            self.final.update(metrics["final"])
            self.best.update(metrics["best"])
