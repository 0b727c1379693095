"""Loggers whose history survives a resume (Lightning's CSV logger deletes it on restart)."""

from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger
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
