"""Stop training after a budget of CPU time: the fair budget on a shared machine, where a
wall-clock limit (``trainer.max_time``) gives each of several runs whatever the others leave."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import pytorch_lightning as pl

from genlab.errors import ConfigError

log = logging.getLogger("genlab")


class CPUBudget(pl.Callback):
    """Stops training once this process has used ``minutes`` of CPU time (user + system, all
    its threads) in training, counted from the start of fit; a resumed run carries its spent
    time on (it is in the checkpoint). The run then validates once at its last step, as a run
    stopped early does, so its objective and best checkpoint exist. ``minutes: null``: no budget.

    Data-loader worker processes are not counted: budgets compare runs with the same
    ``dataset.num_workers`` (0 on a CPU profile).
    """

    def __init__(self, minutes: Optional[float] = None) -> None:
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                    or not minutes > 0):
            raise ConfigError(f"callbacks.cpu_budget.minutes={minutes!r} must be a number of CPU-minutes > 0 "
                              f"(e.g. callbacks.cpu_budget.minutes=20), or null for no budget")
        self.minutes = minutes
        self.spent = 0.0  # CPU seconds of earlier attempts of this run (resume)
        self._start: Optional[float] = None
        self.stopped = False

    def _used(self) -> float:
        return self.spent + (time.process_time() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.minutes is None or self.stopped:
            return
        over = trainer.strategy.reduce_boolean_decision(self._used() >= 60 * self.minutes, all=False)
        if over:
            self.stopped = True
            log.info("callbacks.cpu_budget: %.1f CPU-minutes used at step %d: training stops",
                     self._used() / 60, trainer.global_step)
            trainer.check_val_every_n_epoch = 1  # a stopped run validates at this batch
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"spent_cpu_seconds": self._used()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.spent = float(state_dict.get("spent_cpu_seconds", 0.0))
