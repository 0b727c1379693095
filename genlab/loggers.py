"""Loggers whose history survives a resume (Lightning's CSV logger deletes it on restart), and
a W&B logger that starts its run beside the first training steps instead of before them."""

from __future__ import annotations

import csv
import threading
from typing import Any, Optional

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from genlab.utils import atomic_file


class _KeepingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` instead of deleting it. A resumed run first drops
    the rows logged after its checkpoint (``genlab.resume.truncate_csv_history``)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        pass

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning truncates the file, then writes it again: a run killed in between (the
        # header grows at the first validation and at the test) would lose its whole history.
        if "://" in self.metrics_file_path:
            return super()._rewrite_with_new_header(fieldnames)
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        with atomic_file(self.metrics_file_path) as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, continuing the same ``metrics.csv`` across resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


#: the name of the thread that starts a W&B run (genlab.entry waits for it before closing W&B)
WANDB_START_THREAD = "genlab-wandb-start"


class BackgroundWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run is started in a background thread by
    ``start_in_background(config)``, so that training does not wait for W&B's service (about
    4 s of a start on a loaded 2-core machine, offline too). Until it has started, ``experiment``
    is a stand-in: Lightning's setup touches it only to have the run created, and any real use
    (a logged metric, a sample grid, the config) waits for the start; an error in starting it
    is raised there. ``genlab.entry`` waits for a start in flight before closing W&B."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._starting: Optional[threading.Thread] = None
        self._start_error: Optional[BaseException] = None

    def start_in_background(self, params: dict[str, Any]) -> None:
        """Start the run and record ``params`` (the run's config) in it, in a background thread."""
        if self._experiment is not None or self._starting is not None:
            self.log_hyperparams(params)
            return

        def start() -> None:
            try:
                WandbLogger.log_hyperparams(self, params)  # creates the run (self.experiment)
            except BaseException as err:  # raised in the thread that next uses the run
                self._start_error = err

        self._starting = threading.Thread(target=start, name=WANDB_START_THREAD, daemon=True)
        self._starting.start()

    def wait_started(self) -> None:
        """Wait for a run started in the background; raise the error that stopped it, if any."""
        thread = self._starting
        if thread is None or thread is threading.current_thread():
            return
        thread.join()
        self._starting = None
        if self._start_error is not None:
            err, self._start_error = self._start_error, None
            raise err

    @property
    def experiment(self) -> Any:
        starting = self._starting
        if starting is not None and starting.is_alive() and starting is not threading.current_thread():
            return _StartingRun(self)  # Lightning's setup touches the run only to have it created
        self.wait_started()
        return WandbLogger.experiment.fget(self)

    def __getstate__(self) -> dict[str, Any]:  # pickled for spawned processes: the run exists first
        self.wait_started()
        state = super().__getstate__()
        state["_starting"] = None
        return state


class _StartingRun:
    """Stands for a W&B run that is still starting: any use of it waits for the start."""

    def __init__(self, logger: BackgroundWandbLogger) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        self._logger.wait_started()
        return getattr(self._logger.experiment, name)


def wait_for_wandb_start(timeout: float = 120.0) -> None:
    """Let a W&B run still being started in the background finish starting (before it is closed)."""
    for thread in threading.enumerate():
        if thread.name == WANDB_START_THREAD and thread is not threading.current_thread():
            thread.join(timeout)
