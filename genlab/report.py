"""genlab-report: a table (Markdown and CSV), plots and an HTML dashboard for runs and sweeps.

    genlab-report outputs/train/multirun/<date>_<time>_<id> [more sweeps or runs] [--out DIR]

Reads every job directory of the sweeps (a folder holding ``.hydra/``), or the one run given:
its overrides, its config, ``metrics.json`` (status, final and best values), ``history.json``
(learning curves; the CSV logger's ``metrics.csv`` for runs without one), its newest samples and
``FAILED.json``, and each sweep's ``INTERRUPTED.json`` (the jobs a signal kept from running).
Works offline, on a sweep that is still running, on one whose files were cut short, and on
Optuna sweeps (their ``optimization_results.yaml``). The dashboard (``dashboard/index.html``)
is one folder holding copies of everything it shows: open it from disk or copy it anywhere.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from genlab.errors import GenlabError
from genlab.trust import inert
from genlab.utils import atomic_write_json

log = logging.getLogger(__name__)

#: in a sweep directory: the signal that stopped the sweep and the jobs that never ran
INTERRUPTED = "INTERRUPTED.json"


class NotASweep(GenlabError):
    """The path given to genlab-report is not a sweep directory."""


@dataclass
class Job:
    """What one job directory of a sweep says about its run."""

    name: str  # the job directory, relative to the sweep directory
    overrides: dict[str, str]
    #: completed, failed, interrupted, preempted, running (no metrics.json yet, or status running),
    #: unreadable (metrics.json damaged) or not run (a signal stopped the sweep before it)
    status: str
    objective: Optional[str] = None
    objective_mode: str = "min"
    model: Optional[str] = None
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    path: Optional[Path] = None  # the run directory (None for a job that never ran)
    #: one row per training epoch, validation and test: {"step": ..., "epoch": ..., metric: value}
    history: list[dict[str, float]] = field(default_factory=list)
    #: the earlier runs a multi-stage model is built on (metrics.json's ``stands_on``): stage ->
    #: {"run_dir", "ckpt", "sha256", ...} (``GenerativeModel.stands_on``)
    stands_on: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def objective_value(self) -> Optional[float]:
        """The value genlab-train returned for this job: the best value of its objective."""
        return self.best.get(self.objective) if self.objective else None


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _load_yaml(path: Path, problems: Optional[list[str]] = None) -> Optional[Any]:
    try:
        return OmegaConf.create(inert(OmegaConf.to_container(OmegaConf.load(path)))) if path.is_file() else None
    except Exception as err:  # a file cut short or damaged
        log.warning("cannot read %s: %s", path, err)
        if problems is not None:
            problems.append(f"{path.name} cannot be read ({_first_line(err)})")
        return None


def _raw_yaml(path: Path) -> list:
    """A YAML list as plain Python values (strings stay text: nothing in them is resolved)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, list) else []


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _select(conf: Optional[DictConfig], key: str) -> Any:
    if not isinstance(conf, DictConfig):
        return None
    return OmegaConf.select(conf, key, default=None, throw_on_resolution_failure=False)


def _read_json(path: Path, problems: Optional[list[str]] = None) -> Optional[dict]:
    """The JSON object in ``path``; None when there is no such file, or (said in ``problems``)
    when it cannot be read or is not an object."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as err:
        data, problem = None, f"{path.name} cannot be read ({_first_line(err)})"
    else:
        problem = None if data is None or isinstance(data, dict) else f"{path.name} does not hold a JSON object"
    if problem is not None:
        log.warning("%s: %s", path.parent, problem)
        if problems is not None:
            problems.append(problem)
        return None
    return data


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """``["model=vae", "+trainer.x=1"]`` -> ``{"model": "vae", "trainer.x": "1"}``."""
    parsed = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def _valid_metrics(metrics: dict) -> bool:
    sections = [metrics.get(key, {}) for key in ("final", "best", "not_applicable")]
    return isinstance(metrics.get("status", ""), str) and all(isinstance(section, dict) for section in sections) \
        and all(isinstance(v, (int, float)) for section in sections[:2] for v in section.values())


def read_job(path: Path, sweep_dir: Path) -> Job:
    """One job directory: overrides, config, metrics and failure, whatever of them exist yet. A
    file that cannot be read is said in ``error``; a damaged ``metrics.json`` makes the job
    ``unreadable``."""
    problems: list[str] = []
    overrides = _load_yaml(path / ".hydra" / "overrides.yaml", problems)
    if overrides is not None and not isinstance(overrides, ListConfig):
        problems.append("overrides.yaml does not hold a list of overrides")
        overrides = None
    if overrides is not None:  # as typed: an override that calls a resolver is shown, never resolved
        overrides = [line for line in _raw_yaml(path / ".hydra" / "overrides.yaml") if isinstance(line, str)]
    config = _load_yaml(path / "config_resolved.yaml", problems) or _load_yaml(path / ".hydra" / "config.yaml", problems)
    job = Job(
        name=str(path.relative_to(sweep_dir)),
        overrides=parse_overrides(list(overrides or [])),
        status="running",
        objective=_select(config, "objective"),
        objective_mode=_select(config, "objective_mode") or "min",
        model=_select(_load_yaml(path / ".hydra" / "hydra.yaml", problems), "hydra.runtime.choices.model"),
        path=path,
        history=read_history(path, problems),
    )
    metrics = _read_json(path / "metrics.json", problems)
    if metrics is not None and not _valid_metrics(metrics):
        problems.append("metrics.json does not hold genlab's status, final and best values")
        metrics = None
    if metrics:
        job.status = metrics.get("status", "running")
        job.final, job.best = metrics.get("final", {}), metrics.get("best", {})
        job.not_applicable = metrics.get("not_applicable", {})
        stands_on = metrics.get("stands_on", {})
        if isinstance(stands_on, dict) and all(isinstance(v, dict) for v in stands_on.values()):
            job.stands_on = {str(stage): _checked_record(str(stage), record, problems)
                             for stage, record in stands_on.items()}
        else:
            problems.append("metrics.json's stands_on is not a record per earlier stage")
        if job.status == "interrupted":
            job.error = f"interrupted by {metrics.get('signal', 'a signal')}; re-run the same command to resume it"
    elif (path / "metrics.json").exists():
        job.status = "unreadable"
    if (path / "FAILED.json").exists():
        failed = _read_json(path / "FAILED.json", problems)
        job.status = "failed"
        job.error = f"{failed.get('error', 'Error')}: {failed.get('message', '')}" if failed else None
    if problems:
        job.error = "; ".join([*problems, *([job.error] if job.error else []),
                               "the job was cut short or its files were damaged"])
    return job


def _number(value: Any) -> Optional[float]:
    """A finite number from a JSON or CSV value, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_history(path: Path, problems: Optional[list[str]] = None) -> list[dict[str, float]]:
    """A run's learning curves: the rows of its ``history.json`` (written by every genlab run),
    else of the CSV logger's ``csv/**/metrics.csv``; numbers only, each row with a ``step``."""
    if (path / "history.json").is_file():
        try:
            rows = json.loads((path / "history.json").read_text())
        except (OSError, ValueError) as err:
            rows = None
            if problems is not None:
                problems.append(f"history.json cannot be read ({_first_line(err)})")
    else:
        csv_files, rows = sorted(path.glob("csv/**/metrics.csv")), []
        try:
            if csv_files:
                with csv_files[0].open(newline="") as file:
                    rows = list(csv.DictReader(file))
        except (OSError, csv.Error) as err:
            rows = None
            if problems is not None:
                problems.append(f"{csv_files[0].name} cannot be read ({_first_line(err)})")
    history = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            numbers = {str(k): v for k, v in ((k, _number(v)) for k, v in row.items()) if v is not None}
            if "step" in numbers and len(numbers) > 1 + ("epoch" in numbers):
                history.append(numbers)
    return history


def planned_jobs(sweep_dir: Path) -> Optional[list[list[str]]]:
    """The overrides of every job of a sweep by Hydra's basic sweeper, in job order (split as the
    sweeper splits them, from ``multirun.yaml``); None for other sweepers (Optuna decides its
    trials as it goes) or when they cannot be listed."""
    conf = _load_yaml(sweep_dir / "multirun.yaml")
    if not str(_select(conf, "hydra.sweeper._target_") or "").endswith(".BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = _select(conf, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(_select(conf, "hydra.overrides.task") or [])
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except Exception as err:  # e.g. a glob() sweep, which needs the config loader
        log.warning("cannot list the jobs of the sweep %s: %s", sweep_dir, err)
        return None
    return [list(job) for batch in batches for job in batch]


def record_interrupted_sweep(sweep_dir: Path, job: str, signal_name: str) -> str:
    """``INTERRUPTED.json`` in the sweep directory: the signal, the job it stopped and the jobs
    that never ran (numbers and overrides; for a sweeper that decides its jobs as it goes, how
    many trials were left). Returns the same in one line, with how to finish the sweep."""
    record: dict[str, Any] = {"status": "interrupted", "signal": signal_name, "interrupted_job": job}
    planned = planned_jobs(sweep_dir)
    if planned is not None:
        record["not_run"] = [{"job": str(num), "overrides": overrides}
                             for num, overrides in enumerate(planned) if num > int(job)]
    else:
        trials = _select(_load_yaml(sweep_dir / "multirun.yaml"), "hydra.sweeper.n_trials")
        record["not_run_count"] = max(int(trials) - int(job) - 1, 0) if isinstance(trials, int) else None
    atomic_write_json(sweep_dir / INTERRUPTED, record)
    count = len(record["not_run"]) if "not_run" in record else record["not_run_count"]
    listed = "".join(f"; {item['job']}: {' '.join(item['overrides'])}" for item in record.get("not_run", []))
    return (f"{signal_name} stopped the sweep during job {job}; {'some' if count is None else count} jobs never "
            f"ran{listed}. Re-run the same command with hydra.sweep.dir={sweep_dir} to finish it (finished jobs "
            f"are skipped, job {job} resumes); recorded in {sweep_dir / INTERRUPTED}")


def _not_run_jobs(sweep_dir: Path, jobs: Sequence[Job]) -> list[Job]:
    record = _read_json(sweep_dir / INTERRUPTED)
    if record is None:
        return []
    started = {job.name for job in jobs}
    return [Job(name=item["job"], overrides=parse_overrides(item["overrides"]), status="not run",
                error=f"the sweep was stopped by {record.get('signal')} before this job")
            for item in record.get("not_run") or [] if item["job"] not in started]


def read_sweep(sweep_dir: Path) -> list[Job]:
    """Every job of a sweep directory, in job order; refuses a path that is not one."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NotASweep(f"{sweep_dir} is not a directory; pass a sweep directory, "
                        "e.g. outputs/train/multirun/<date>_<time>_<id>, or a run directory")
    if (sweep_dir / ".hydra").is_dir():
        raise NotASweep(f"{sweep_dir} is the directory of one run (it holds .hydra/), not a sweep directory; "
                        f"pass the sweep directory that holds the job directories (for a job of a sweep: "
                        f"{sweep_dir.parent})")
    job_dirs = sorted({p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()},
                      key=lambda p: _natural_key(str(p.relative_to(sweep_dir))))
    if not job_dirs and not (sweep_dir / "multirun.yaml").is_file():
        raise NotASweep(f"{sweep_dir} is not a sweep or run directory: it holds no job directories (folders "
                        "with .hydra/) and no multirun.yaml. Sweeps are written by `genlab-train -m ...` under "
                        "<paths.log_dir>/<task>/multirun/, single runs under <paths.log_dir>/<task>/.")
    jobs = [read_job(path, sweep_dir) for path in job_dirs]
    return jobs + _not_run_jobs(sweep_dir, jobs)


def read_runs(paths: Sequence[Path]) -> list[Job]:
    """The jobs of every path: a run directory (holding ``.hydra/``) is one job, a sweep
    directory all of its own. With several paths, each job is named by its path from their
    common folder (``sweep-a/3``)."""
    paths = [Path(p) for p in paths]
    found = []
    for path in paths:
        is_run = (path / ".hydra").is_dir()
        found.append((path, [read_job(path, path.parent)] if is_run else read_sweep(path), is_run))
    if len(paths) == 1:
        return found[0][1]
    common = Path(os.path.commonpath([p.resolve() for p in paths]))
    jobs = []
    for path, listed, is_run in found:
        label = path.resolve().relative_to(common).as_posix() if path.resolve() != common else path.name
        for job in listed:
            job.name = label if is_run else f"{label}/{job.name}"
            jobs.append(job)
    return jobs


def differing_overrides(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value is not the same in every job (in first-seen order)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """The main metrics present: bits/dim (with its standard error; a conditional model's given
    the label too) and every FID (with its reference size and noise floor), validation then test."""
    present = {name for job in jobs for name in (*job.final, *job.best)}
    fids = sorted(name.split("/", 1)[1] for name in present if re.match(r"(val|test)/fid_", name))
    bpds = ("bpd", "bpd_stderr", "bpd_conditional", "bpd_conditional_stderr")
    wanted = [f"{split}/{name}" for split in ("val", "test") for name in (*bpds, *dict.fromkeys(fids))]
    return [name for name in wanted if name in present or any(_not_applicable(job, name) for job in jobs)]


def _not_applicable(job: Job, metric: str) -> bool:
    short = metric.split("/", 1)[-1]
    return any(short == key or short.startswith(f"{key}_") for key in job.not_applicable)


def _cell(job: Job, values: dict[str, float], metric: str) -> Optional[float | str]:
    if metric in values:
        return values[metric]
    return "n/a" if _not_applicable(job, metric) else None


_PATH_FIELDS = ("run_dir", "ckpt")


def _checked_record(stage: str, record: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A ``stands_on`` record with its paths (strings without NUL) and SHA-256 (64 hex digits)
    checked: a field that is neither is dropped, and said in ``problems`` (metrics.json is a file
    people open: data, never trusted to be well formed)."""
    checked = dict(record)
    if "ckpt" not in checked and "vqvae_ckpt" in checked:  # the name genlab wrote until 2026-12-06
        checked["ckpt"] = checked.pop("vqvae_ckpt")
    for key in (*_PATH_FIELDS, "sha256"):
        value = checked.get(key)
        if value is None:
            continue
        ok = (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None if key == "sha256"
              else isinstance(value, str) and value != "" and "\0" not in value)
        if not ok:
            del checked[key]
            problems.append(f"metrics.json's stands_on.{stage}.{key} is not "
                            + ("a SHA-256 (64 hex digits)" if key == "sha256" else "a path") + ": ignored")
    return checked


#: SHA-256 of the checkpoints traced, by (path, device, inode, size, mtime): a checkpoint many
#: jobs stand on is read once per report (``write_report`` empties it)
_HASHES: dict[tuple, str] = {}


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of a regular file, reading at most the size it had when looked at: a FIFO, a
    device or a /proc file (which says size 0) is never read to its end or waited on. Raises
    OSError (``IsADirectoryError`` where it is not a regular file) when it cannot be hashed."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key not in _HASHES:
            digest, left = hashlib.sha256(), info.st_size
            while left > 0:
                block = os.read(fd, min(left, 1 << 20))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            _HASHES[key] = digest.hexdigest()
        return _HASHES[key]
    finally:
        os.close(fd)


def _moved_run_dir(recorded: str, here: Path) -> Optional[Path]:
    """Where a stage-1 run directory recorded at ``recorded`` (an absolute path that no longer
    exists) is in a copied output tree: the longest tail of it, two folders at least (the run
    and its parent), that is a run directory (holds ``.hydra``) under a folder above ``here``."""
    parts = Path(recorded).parts
    for start in range(1, len(parts) - 1):
        tail = Path(*parts[start:])
        for folder in here.parents:
            if (folder / tail / ".hydra").is_dir():
                return folder / tail
    return None


def _stage_trace(stage: str, record: dict[str, Any], here: Optional[Path], by_dir: dict[str, str]) -> str:
    run_dir, ckpt, sha = record.get("run_dir"), record.get("ckpt"), record.get("sha256")
    found = Path(run_dir) if run_dir is not None else None
    moved = None
    if found is not None and not found.exists() and found.is_absolute() and here is not None:
        moved = _moved_run_dir(run_dir, here)  # the output tree was copied (cluster -> laptop)
        if moved is not None:
            if ckpt is not None and Path(ckpt).is_relative_to(found):
                ckpt = str(moved / Path(ckpt).relative_to(found))
            found = moved
    where = by_dir.get(str(found.resolve())) if found is not None else None
    if where is not None:
        text = f"{stage}: job {where}"
    else:
        text = f"{stage}: run {found if found is not None else '(not recorded)'}"
        if moved is not None:
            text += f" (recorded as {run_dir})"
    if ckpt is not None:
        text += f", {Path(ckpt).name}"
        if sha is not None:
            text += f" sha256 {sha[:12]}"
            path = Path(ckpt)
            if not path.exists():
                text += " (the file is gone)"
            else:
                try:
                    if checkpoint_sha256(path) != sha:
                        text += " (the file there has changed since: not the one this run stands on)"
                except OSError as err:
                    text += f" (the file there cannot be read: {type(err).__name__}: {err.strerror or err})"
    return text


def trace(job: Job, jobs: Sequence[Job]) -> str:
    """What ``job`` stands on, one stage at a time: the job of this report that wrote the
    checkpoint (by its run directory, also where the output tree was copied elsewhere since:
    ``_moved_run_dir``), else that directory; the checkpoint's file name and the first 12 hex
    digits of its SHA-256, and whether the file there now still has them (only regular files
    are read; one that cannot be is said)."""
    by_dir = {str(other.path.resolve()): other.name for other in jobs if other.path is not None}
    here = job.path.resolve() if job.path is not None else None
    parts = []
    for stage, record in job.stands_on.items():
        try:
            parts.append(_stage_trace(stage, record, here, by_dir))
        except (OSError, ValueError, RuntimeError) as err:  # cannot be looked at (RuntimeError: a symlink loop)
            parts.append(f"{stage}: cannot be traced ({type(err).__name__}: {err})")
    return "; ".join(parts)


def table(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: job, differing overrides, status, objective, metrics (final, and best
    where it ever differs from final), what a multi-stage run stands on (when one does), error."""
    keys = differing_overrides(jobs)
    staged = any(job.stands_on for job in jobs)
    columns: list[tuple[str, str]] = []
    for metric in metrics:
        columns.append((metric, "final"))
        if any(job.best.get(metric) != job.final.get(metric) for job in jobs):
            columns.append((metric, "best"))
    header = ["job", *keys, "status", "objective value", *(f"{m} ({kind})" for m, kind in columns),
              *["stands on"] * staged, "error"]
    rows = []
    for job in jobs:
        cells = [_cell(job, job.final if kind == "final" else job.best, m) for m, kind in columns]
        rows.append([job.name, *(job.overrides.get(key) for key in keys), job.status, job.objective_value,
                     *cells, *([trace(job, jobs) or None] if staged else []), job.error])
    return header, rows


def best_job(jobs: Sequence[Job]) -> Optional[Job]:
    """The job with the best objective (in its objective_mode) among those that measured it."""
    scored = [job for job in jobs if job.objective_value is not None and math.isfinite(job.objective_value)]
    if not scored:
        return None
    sign = -1 if scored[0].objective_mode == "max" else 1
    return min(scored, key=lambda job: sign * job.objective_value)


def summary(jobs: Sequence[Job]) -> str:
    """``4 jobs: 3 completed, 1 failed``."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{len(jobs)} job{'s' * (len(jobs) != 1)}" + (f": {parts}" if parts else "")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


# ----- runs that differ only by their seed ------------------------------------------------------

#: the override that names a run's seed: runs that differ only by it are repeats of one setting
SEED = "seed"


@dataclass
class SeedGroup:
    """Completed runs that differ only by their seed, with mean and sd over them."""

    model: Optional[str]
    overrides: dict[str, str]  # the overrides they share (the seed left out)
    jobs: list[Job]



def mean_sd(values: Sequence[Optional[float]]) -> Optional[tuple[float, float, int]]:
    """(mean, sample standard deviation (n - 1), n) of the values measured; None under two."""
    measured = [v for v in values if v is not None and math.isfinite(v)]
    if len(measured) < 2:
        return None
    return statistics.mean(measured), statistics.stdev(measured), len(measured)


def seed_groups(jobs: Sequence[Job]) -> list[SeedGroup]:
    """The groups of two or more completed runs whose model and overrides are the same but for
    the seed, in the order of their first run."""
    groups: dict[tuple, SeedGroup] = {}
    for job in jobs:
        if job.status != "completed" or SEED not in job.overrides:
            continue
        shared = {k: v for k, v in job.overrides.items() if k not in (SEED, "model")}
        key = (job.model, tuple(sorted(shared.items())))
        groups.setdefault(key, SeedGroup(job.model, shared, [])).jobs.append(job)
    return [g for g in groups.values() if len({job.overrides[SEED] for job in g.jobs}) > 1]


def seed_table(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the seed aggregate: model, shared overrides that differ between the
    groups, seeds, then ``mean +- sd`` of the objective value and of each metric (final)."""
    groups = seed_groups(jobs)
    keys = list(dict.fromkeys(k for g in groups for k in g.overrides))
    keys = [k for k in keys if len({g.overrides.get(k) for g in groups}) > 1]  # what tells the groups apart
    header = ["model", *keys, "seeds", "objective value", *metrics]
    rows = []
    for group in groups:
        cells = [mean_sd([job.objective_value for job in group.jobs]),
                 *(mean_sd([job.final.get(m) for job in group.jobs]) for m in metrics)]
        seeds = ",".join(sorted((job.overrides[SEED] for job in group.jobs), key=_natural_key))
        rows.append([group.model, *(group.overrides.get(k) for k in keys), seeds, *cells])
    return header, rows


def _mean_sd(cell: Any, md: bool) -> Any:
    if isinstance(cell, tuple):
        mean, sd, _ = cell
        return f"{mean:.4g} ± {sd:.2g}" if md else f"{mean!r} ± {sd!r}"
    return cell


# ----- plots --------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def model_colors(jobs: Sequence[Job]) -> dict[Optional[str], Any]:
    """One colour per model, the same in every plot."""
    import matplotlib

    models = sorted({job.model or "?" for job in jobs})
    palette = matplotlib.colormaps["tab10"]
    return {model: palette(num % 10) for num, model in enumerate(models)}


def _categorical(values: Sequence[Optional[str]], key: str) -> bool:
    """Draw an override on a categorical axis unless its values are numbers with a fraction (a
    learning rate, a beta): seeds, sizes and names are categories."""
    numbers = [_number(v) for v in values]
    return key == SEED or any(x is None for x in numbers) or all(float(x).is_integer() for x in numbers)


def plot_objective(jobs: Sequence[Job], out: Path) -> list[Path]:
    """One PNG per swept override (and objective, where jobs have different ones): the objective
    of each job against its value of the override, coloured by model; where seeds repeat a
    setting, their mean with +- one standard deviation."""
    import matplotlib.pyplot as plt

    scored = [job for job in jobs if job.objective_value is not None and math.isfinite(job.objective_value)]
    objectives = list(dict.fromkeys(job.objective for job in scored))
    colors = model_colors(jobs)
    paths = []
    for objective, key in [(o, k) for o in objectives for k in differing_overrides(jobs)]:
        mine = [job for job in scored if job.objective == objective and key in job.overrides]
        values = [job.overrides[key] for job in mine]
        if len(set(values)) < 2:  # e.g. an override that only one of several sweeps has
            continue
        categorical = _categorical(values, key)
        labels = sorted(set(values), key=_natural_key)
        position = {v: num if categorical else _number(v) for num, v in enumerate(labels)}
        models = sorted({job.model or "?" for job in mine})
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for num, model in enumerate(models):
            offset = (num - (len(models) - 1) / 2) * 0.08 if categorical else 0.0  # side by side
            by_value = {v: [job.objective_value for job in mine if (job.model or "?") == model
                            and job.overrides[key] == v] for v in labels}
            points = [(position[v] + offset, y) for v, ys in by_value.items() for y in ys]
            ax.scatter(*zip(*points), color=colors[model], alpha=0.4, s=16)
            means = [(position[v] + offset, statistics.mean(ys), statistics.stdev(ys) if len(ys) > 1 else 0.0)
                     for v, ys in by_value.items() if ys]
            ax.errorbar(*zip(*[(x, m) for x, m, _ in means]), yerr=[sd for _, _, sd in means],
                        fmt="o" if categorical else "o-", color=colors[model], capsize=3, label=model)
        if categorical:
            ax.set_xticks(range(len(labels)), labels)
        elif min(position.values()) > 0 and max(position.values()) >= 10 * min(position.values()):
            ax.set_xscale("log")  # e.g. a learning rate
        ax.set(xlabel=key, ylabel=f"{objective} (best)", title=f"{objective} by {key} (mean ± sd over seeds)")
        ax.legend(title="model", fontsize="small")
        name = f"{'objective' if len(objectives) == 1 else _safe_name(objective)}_by_{_safe_name(key)}"
        paths.append(_save(fig, out / f"{name}.png"))
    return paths


def curve_metrics(jobs: Sequence[Job]) -> list[str]:
    """The metrics drawn as learning curves: each objective and the training loss, where some
    run's history measured them at two or more points."""
    wanted = [*dict.fromkeys(job.objective for job in jobs if job.objective), "train/loss"]
    return [m for m in wanted if any(sum(m in row for row in job.history) > 1 for job in jobs)]


def plot_curves(jobs: Sequence[Job], out: Path) -> list[Path]:
    """One PNG per curve metric: its value against the training step, one line per run,
    coloured by model."""
    import matplotlib.pyplot as plt

    colors = model_colors(jobs)
    paths = []
    for metric in curve_metrics(jobs):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for job in jobs:
            points = [(row["step"], row[metric]) for row in job.history if metric in row]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, color=colors[job.model or "?"],
                        label=f"{job.model or '?'}: {job.name}" if len(jobs) <= 12 else None, alpha=0.8)
        ax.set(xlabel="training step", ylabel=metric, title=f"{metric} while training")
        if len(jobs) > 12:  # too many runs to name: the colours say the model
            for model, color in colors.items():
                ax.plot([], [], color=color, label=model)
        ax.legend(fontsize="x-small")
        paths.append(_save(fig, out / f"curve_{_safe_name(metric)}.png"))
    return paths


def pair_points(jobs: Sequence[Job], x: str, y: str) -> dict[str, list[tuple[str, float, float]]]:
    """(model, x, y) per job that measured both (test split, else val), by feature extractor:
    ``x`` and ``y`` are metric names without the split, where ``{ext}`` stands for the extractor
    (``bpd`` and ``fid_{ext}``; ``precision_{ext}`` and ``recall_{ext}``). Values of different
    extractors are not comparable."""
    by_extractor: dict[str, list[tuple[str, float, float]]] = {}
    for job in jobs:
        for split in ("test", "val"):
            xs, ys = _by_extractor(job.final, f"{split}/{x}"), _by_extractor(job.final, f"{split}/{y}")
            common = [ext for ext in ys if ext in xs or "" in xs]
            if common:
                for ext in common:
                    by_extractor.setdefault(ext, []).append((job.model or "?", xs.get(ext, xs.get("")), ys[ext]))
                break
    return by_extractor


#: keys that describe a metric rather than measure one (``val/fid_classifier_floor``, ...)
STATISTIC_SUFFIXES = ("_floor", "_ref_size", "_stderr")


def _by_extractor(values: dict[str, float], pattern: str) -> dict[str, float]:
    """The values whose name fits ``pattern`` (``{ext}`` standing for any extractor name), by
    extractor ("" for a pattern without one)."""
    regex = re.escape(pattern).replace(re.escape("{ext}"), "(?P<ext>.+)")
    found = {}
    for name, value in values.items():
        match = re.fullmatch(regex, name)
        if match and not name.endswith(STATISTIC_SUFFIXES):
            found[match.groupdict().get("ext") or ""] = value
    return found


def fid_bpd_points(jobs: Sequence[Job]) -> dict[str, list[tuple[str, float, float]]]:
    """(model, bits/dim, FID) per job that measured both (test split, else val), by extractor."""
    return pair_points(jobs, "bpd", "fid_{ext}")


#: the family comparison plots: (x, y, axis labels, title, file name), names as for pair_points
COMPARISONS = [
    ("bpd", "fid_{ext}", "bits/dim (test, else val)", "FID ({ext})", "FID against bits/dim", "fid_{ext}_vs_bpd"),
    ("precision_{ext}", "recall_{ext}", "precision ({ext})", "recall ({ext})", "recall against precision",
     "precision_recall_{ext}"),
]


def plot_comparisons(jobs: Sequence[Job], out: Path) -> list[Path]:
    """The family comparison plots, one PNG per feature extractor, one point per job, coloured
    by model: FID against bits/dim, and recall against precision where they were measured."""
    import matplotlib.pyplot as plt

    colors = model_colors(jobs)
    paths = []
    for x, y, xlabel, ylabel, title, name in COMPARISONS:
        for extractor, points in sorted(pair_points(jobs, x, y).items()):
            fig, ax = plt.subplots(figsize=(5.5, 3.5))
            for model in sorted({m for m, _, _ in points}):
                ax.scatter([a for m, a, _ in points if m == model], [b for m, _, b in points if m == model],
                           color=colors[model], label=model)
            ax.set(xlabel=xlabel.format(ext=extractor), ylabel=ylabel.format(ext=extractor), title=title)
            ax.legend(title="model", fontsize="small")
            paths.append(_save(fig, out / f"{_safe_name(name.format(ext=extractor))}.png"))
    return paths


def _fmt(value: Any, md: bool, width: int = 100) -> str:
    """A table cell: full precision in CSV; 4 significant digits and one short line in Markdown."""
    if value is None:
        return ""
    value = _mean_sd(value, md)
    if md and isinstance(value, str) and len(value) > 8 and _number(value) is not None:
        value = float(value)  # an override such as lr=0.0020272731701527604
    if isinstance(value, float):
        return f"{value:.4g}" if md else repr(value)
    text = str(value)
    if md:
        text = " ".join(text.split()).replace("|", "\\|")
        text = text if len(text) <= width else text[:width - 3] + "..."
    return text


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_fmt(v, md=False) for v in row] for row in rows])


def _markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(v, md=True) for v in row) + " |" for row in rows)]


def _optuna_lines(sweep_dir: Path, jobs: Sequence[Job]) -> list[str]:
    results = _load_yaml(sweep_dir / "optimization_results.yaml")
    if results is None or "best_value" not in results:
        return []
    params = OmegaConf.to_container(results.best_params)
    match = [job.name for job in jobs if all(job.overrides.get(k) == str(v) for k, v in params.items())]
    where = f" (job {match[0]})" if match else ""
    return [f"Optuna best value: {results.best_value:.6g} with "
            f"{', '.join(f'{k}={v}' for k, v in params.items())}{where}."]


@dataclass
class Report:
    """What genlab-report found and made, for the Markdown file and the dashboard."""

    title: str
    paths: list[Path]
    jobs: list[Job]
    header: list[str]
    rows: list[list[Any]]
    seed_header: list[str]
    seed_rows: list[list[Any]]
    notes: list[str]
    plots: list[Path]


def write_report(paths: Path | Sequence[Path], out: Optional[Path] = None,
                 metrics: Optional[Sequence[str]] = None) -> Path:
    """report.md, report.csv, the plots and the dashboard (``dashboard/index.html``) for one run,
    a sweep or several of either; returns the Markdown file. ``out`` defaults to the one path
    given (it is needed for several)."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if out is None and len(paths) > 1:
        raise NotASweep(f"{len(paths)} directories given and no --out: pass --out DIR, the folder for the report")
    jobs = read_runs(paths)
    _HASHES.clear()  # a checkpoint is hashed once per report (and again by the next one)
    out = Path(out) if out is not None else paths[0]
    _check_dashboard_folder(out / "dashboard")
    out.mkdir(parents=True, exist_ok=True)
    objectives = list(dict.fromkeys(job.objective for job in jobs if job.objective))
    chosen = [m for m in (metrics or default_metrics(jobs)) if m not in objectives]
    header, rows = table(jobs, [*objectives, *chosen])
    write_csv(out / "report.csv", header, rows)
    seed_header, seed_rows = seed_table(jobs, [*objectives, *chosen])
    if seed_rows:
        write_csv(out / "report_seeds.csv", seed_header, seed_rows)
    plots = plot_objective(jobs, out) + plot_curves(jobs, out) + plot_comparisons(jobs, out)

    notes = [f"{summary(jobs)}."]
    if objectives:
        modes = {job.objective_mode for job in jobs if job.objective}
        notes.append(f"Objective (what genlab-train returns): best {', '.join(objectives)} "
                     f"({'/'.join(sorted(modes))}).")
    best = best_job(jobs)
    if best is not None:
        notes.append(f"Best job: {best.name}, {best.objective} = {best.objective_value:.6g}.")
    for path in paths:
        notes += _optuna_lines(path, [job for job in jobs if job.path is None or path in job.path.parents])
    title = (f"Run {paths[0].name}" if (paths[0] / ".hydra").is_dir() else f"Sweep {paths[0].name}") \
        if len(paths) == 1 else f"{len(paths)} sweeps and runs"
    report = Report(title, paths, jobs, header, rows, seed_header, seed_rows, notes, plots)

    lines = [f"# {title}", "", f"`{', '.join(map(str, paths))}`: {notes[0]}", *notes[1:], "",
             *_markdown_table(header, rows)]
    if seed_rows:
        lines += ["", "## Mean ± sd over seeds", "", *_markdown_table(seed_header, seed_rows)]
    for status, heading in NEEDS_ATTENTION.items():
        listed = [job for job in jobs if job.status == status]
        if listed:
            lines += ["", f"## {heading}", ""]
            lines += [f"- {job.name}: {_fmt(job.error or 'see its log', md=True, width=1000)}" for job in listed]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    lines += ["", "Dashboard: [dashboard/index.html](dashboard/index.html)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    write_dashboard(report, out / "dashboard")
    return path


# ----- the HTML dashboard -------------------------------------------------------------------------


def latest_samples(run_dir: Optional[Path]) -> tuple[Optional[Path], list[Path]]:
    """A run's newest sample grid (``samples/*.png``) and newest sounds (up to 8 of
    ``samples/**/*.wav``), newest by time written, then by name. Files only, never symbolic
    links: the dashboard is made to be copied and shared, and a link in a run folder must not
    put the file it leads to (anywhere on this machine) into it."""
    samples = run_dir / "samples" if run_dir is not None else None
    if samples is None or samples.is_symlink() or not samples.is_dir():
        return None, []

    def newest(files: Iterable[Path]) -> list[Path]:
        regular = [f for f in files if f.is_file() and not f.is_symlink()]
        return sorted(regular, key=lambda f: (f.stat().st_mtime_ns, _natural_key(f.name)))

    grids = newest(samples.glob("*.png"))
    sounds = newest(samples.rglob("*.wav"))[-8:]
    return (grids[-1] if grids else None), sorted(sounds, key=lambda f: _natural_key(str(f)))


def _sort_key(value: Any) -> str:
    """What the table sorts a cell by: its number, else its text."""
    value = value[0] if isinstance(value, tuple) else value
    number = _number(value) if value is not None else None
    return repr(number) if number is not None else ("" if value is None else str(value))


#: in the dashboard's page: what marks a folder as one genlab-report may write over
GENERATOR = '<meta name="generator" content="genlab-report">'


def _check_dashboard_folder(folder: Path) -> None:
    """Refuses to replace a folder that is not a dashboard genlab-report wrote."""
    index = folder / "index.html"
    if folder.exists() and not (index.is_file() and GENERATOR in index.read_text(errors="replace")[:2000]):
        raise NotASweep(f"{folder} exists and is not a dashboard written by genlab-report; it is left as it is: "
                        f"move it or pass another --out")


def _copy(files: Sequence[Path], into: Path, folder: Path) -> list[str]:
    """Copies ``files`` into ``into`` (numbered, in order); their addresses relative to ``folder``."""
    from urllib.parse import quote

    if files:
        into.mkdir(parents=True, exist_ok=True)
    return [quote(Path(shutil.copy2(f, into / f"{num:02d}_{f.name}")).relative_to(folder).as_posix())
            for num, f in enumerate(files)]


def write_dashboard(report: Report, folder: Path) -> Path:
    """``folder/index.html`` and copies of the plots, sample grids and sounds it shows."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    _check_dashboard_folder(folder)
    if folder.exists():
        shutil.rmtree(folder)  # the dashboard of an earlier report, written again from scratch
    folder.mkdir(parents=True)
    runs = []
    for num, job in enumerate(report.jobs):
        grid, sounds = latest_samples(job.path)
        media = folder / "runs" / f"{num:03d}_{_safe_name(job.name)}"
        runs.append({"job": job, "grid": _copy([grid], media, folder)[0] if grid else None,
                     "grid_name": grid.name if grid else None,
                     "sounds": list(zip(_copy(sounds, media / "sounds", folder), (f.name for f in sounds)))})
    with_model = "model" not in report.header  # the model column, unless an override names it already
    columns = ["model"] * with_model + report.header
    cells = [[(_fmt(job.model, md=True), _sort_key(job.model))] * with_model
             + [(_fmt(v, md=True, width=300), _sort_key(v)) for v in row] for job, row in zip(report.jobs, report.rows)]
    seed_cells = [[(_fmt(v, md=True), _sort_key(v)) for v in row] for row in report.seed_rows]
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("dashboard.html.j2").render(
        generator=Markup(GENERATOR), report=report, columns=columns, cells=cells, seed_header=report.seed_header,
        seed_cells=seed_cells, runs=runs,
        plots=list(zip((p.name for p in report.plots), _copy(report.plots, folder / "plots", folder))))
    index = folder / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


#: the statuses the report lists under a heading of their own, with the reason
NEEDS_ATTENTION = {"failed": "Failed jobs", "unreadable": "Unreadable jobs", "interrupted": "Interrupted jobs",
                   "not run": "Jobs that never ran"}


class SweepSummary(Callback):
    """Hydra callback, at the end of a sweep: logs how many jobs completed and failed (each
    failure with its error) and exits with status 1 when any job failed, after all ran."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / INTERRUPTED).unlink(missing_ok=True)  # every job ran this time
        try:
            jobs = read_sweep(sweep_dir)
        except NotASweep as err:
            log.warning("no sweep summary: %s", err)
            return
        log.info("sweep finished: %s. Table and plots: genlab-report %s", summary(jobs), sweep_dir)
        failed = [job for job in jobs if job.status == "failed"]
        for job in failed:
            log.error("job %s failed: %s", job.name, job.error)
        if failed:
            log.error("%d of %d jobs of the sweep failed (exit status 1)", len(failed), len(jobs))
            raise SystemExit(1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="genlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", metavar="DIR",
                        help="sweep directories (outputs/<task>/multirun/<run>) or run directories, one or more")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the one directory given; needed for several)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metrics to show besides the objective (default: bits/dim and FID, val and test)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.paths, args.out, args.metrics)
    except NotASweep as err:
        print(f"genlab-report: error: {err}", file=sys.stderr)
        return 2
    jobs = read_runs(args.paths)
    print(f"{summary(jobs)}; wrote {path}, {path.with_suffix('.csv')} and {path.parent / 'dashboard' / 'index.html'}")
    for job in jobs:
        if job.status in NEEDS_ATTENTION or job.error:
            print(f"  {job.status}: {job.name}: {job.error or 'see its log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
