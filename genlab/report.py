"""genlab-report: one table (Markdown and CSV) and plots for a sweep directory.

    genlab-report outputs/train/multirun/<date>_<time>_<id> [--out DIR] [--metrics val/bpd ...]

Reads every job directory of the sweep (a folder holding ``.hydra/``): its overrides, its config,
``metrics.json`` (status, final and best values) and ``FAILED.json``, and the sweep's
``INTERRUPTED.json`` (the jobs a signal kept from running). Works offline, on a sweep that is
still running, on one whose files were cut short, and on Optuna sweeps (their
``optimization_results.yaml``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from genlab.errors import GenlabError
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

    @property
    def objective_value(self) -> Optional[float]:
        """The value genlab-train returned for this job: the best value of its objective."""
        return self.best.get(self.objective) if self.objective else None


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _load_yaml(path: Path, problems: Optional[list[str]] = None) -> Optional[Any]:
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception as err:  # a file cut short or damaged
        log.warning("cannot read %s: %s", path, err)
        if problems is not None:
            problems.append(f"{path.name} cannot be read ({_first_line(err)})")
        return None


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
    config = _load_yaml(path / "config_resolved.yaml", problems) or _load_yaml(path / ".hydra" / "config.yaml", problems)
    job = Job(
        name=str(path.relative_to(sweep_dir)),
        overrides=parse_overrides(list(overrides or [])),
        status="running",
        objective=_select(config, "objective"),
        objective_mode=_select(config, "objective_mode") or "min",
        model=_select(_load_yaml(path / ".hydra" / "hydra.yaml", problems), "hydra.runtime.choices.model"),
    )
    metrics = _read_json(path / "metrics.json", problems)
    if metrics is not None and not _valid_metrics(metrics):
        problems.append("metrics.json does not hold genlab's status, final and best values")
        metrics = None
    if metrics:
        job.status = metrics.get("status", "running")
        job.final, job.best = metrics.get("final", {}), metrics.get("best", {})
        job.not_applicable = metrics.get("not_applicable", {})
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
                        "e.g. outputs/train/multirun/<date>_<time>_<id>")
    if (sweep_dir / ".hydra").is_dir():
        raise NotASweep(f"{sweep_dir} is the directory of one run (it holds .hydra/), not a sweep directory; "
                        f"pass the sweep directory that holds the job directories (for a job of a sweep: "
                        f"{sweep_dir.parent})")
    job_dirs = sorted({p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()},
                      key=lambda p: _natural_key(str(p.relative_to(sweep_dir))))
    if not job_dirs and not (sweep_dir / "multirun.yaml").is_file():
        raise NotASweep(f"{sweep_dir} is not a sweep directory: it holds no job directories (folders with "
                        ".hydra/) and no multirun.yaml. Sweeps are written by `genlab-train -m ...` under "
                        "<paths.log_dir>/<task>/multirun/.")
    jobs = [read_job(path, sweep_dir) for path in job_dirs]
    return jobs + _not_run_jobs(sweep_dir, jobs)


def differing_overrides(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value is not the same in every job (in first-seen order)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """The main metrics present: bits/dim and every FID, validation then test."""
    present = {name for job in jobs for name in (*job.final, *job.best)}
    fids = sorted(name.split("/", 1)[1] for name in present if re.match(r"(val|test)/fid_", name))
    wanted = [f"{split}/{name}" for split in ("val", "test") for name in ("bpd", *dict.fromkeys(fids))]
    return [name for name in wanted if name in present or any(_not_applicable(job, name) for job in jobs)]


def _not_applicable(job: Job, metric: str) -> bool:
    short = metric.split("/", 1)[-1]
    return any(short == key or short.startswith(f"{key}_") for key in job.not_applicable)


def _cell(job: Job, values: dict[str, float], metric: str) -> Optional[float | str]:
    if metric in values:
        return values[metric]
    return "n/a" if _not_applicable(job, metric) else None


def table(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: job, differing overrides, status, objective, metrics (final, and best
    where it ever differs from final), error."""
    keys = differing_overrides(jobs)
    columns: list[tuple[str, str]] = []
    for metric in metrics:
        columns.append((metric, "final"))
        if any(job.best.get(metric) != job.final.get(metric) for job in jobs):
            columns.append((metric, "best"))
    header = ["job", *keys, "status", "objective value", *(f"{m} ({kind})" for m, kind in columns), "error"]
    rows = []
    for job in jobs:
        cells = [_cell(job, job.final if kind == "final" else job.best, m) for m, kind in columns]
        rows.append([job.name, *(job.overrides.get(key) for key in keys), job.status, job.objective_value,
                     *cells, job.error])
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


def _to_float(value: Optional[str]) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_objective(jobs: Sequence[Job], out: Path) -> list[Path]:
    """One PNG per swept override: the objective of each job against its value of the override."""
    import matplotlib.pyplot as plt

    scored = [job for job in jobs if job.objective_value is not None and math.isfinite(job.objective_value)]
    paths = []
    for key in differing_overrides(jobs):
        points = [(job.overrides.get(key), job.objective_value) for job in scored]
        if not points:
            continue
        numbers = [_to_float(x) for x, _ in points]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if all(x is not None for x in numbers):
            ax.scatter(numbers, [y for _, y in points])
            if min(numbers) > 0 and max(numbers) >= 10 * min(numbers):  # e.g. a learning rate
                ax.set_xscale("log")
        else:
            labels = sorted({str(x) for x, _ in points}, key=_natural_key)
            ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points])
            ax.set_xticks(range(len(labels)), labels)
        objective = scored[0].objective
        ax.set(xlabel=key, ylabel=f"{objective} (best)", title=f"{objective} by {key}")
        paths.append(_save(fig, out / f"objective_by_{_safe_name(key)}.png"))
    return paths


def fid_bpd_points(jobs: Sequence[Job]) -> dict[str, list[tuple[str, float, float]]]:
    """(model, bits/dim, FID) per job that measured both (test split, else val), by FID
    extractor: FIDs of different extractors are not comparable."""
    by_extractor: dict[str, list[tuple[str, float, float]]] = {}
    for job in jobs:
        for split in ("test", "val"):
            bpd = job.final.get(f"{split}/bpd")
            fids = {name.split("/fid_", 1)[1]: value for name, value in job.final.items()
                    if name.startswith(f"{split}/fid_")}
            if bpd is not None and fids:
                for extractor, fid in fids.items():
                    by_extractor.setdefault(extractor, []).append((job.model or "?", bpd, fid))
                break
    return by_extractor


def plot_fid_vs_bpd(jobs: Sequence[Job], out: Path) -> list[Path]:
    """One PNG per FID extractor: FID against bits/dim, one point per job, coloured by model."""
    import matplotlib.pyplot as plt

    by_extractor = fid_bpd_points(jobs)
    paths = []
    for extractor, points in sorted(by_extractor.items()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for model in sorted({m for m, _, _ in points}):
            ax.scatter([b for m, b, _ in points if m == model], [f for m, _, f in points if m == model], label=model)
        ax.set(xlabel="bits/dim (test, else val)", ylabel=f"FID ({extractor})", title="FID against bits/dim")
        ax.legend(title="model")
        paths.append(_save(fig, out / f"fid_{_safe_name(extractor)}_vs_bpd.png"))
    return paths


def plot_precision_recall(jobs: Sequence[Job], out: Path) -> list[Path]:
    """One PNG per feature extractor: precision against recall (test split, else val), one point
    per job coloured by model. High precision with low recall is mode seeking (GANs), high
    recall with lower precision mode covering (likelihood models)."""
    import matplotlib.pyplot as plt

    by_extractor: dict[str, list[tuple[str, float, float]]] = {}
    for job in jobs:
        for split in ("test", "val"):
            prefix = f"{split}/precision_"
            extractors = [name[len(prefix):] for name in job.final if name.startswith(prefix)]
            found = [e for e in extractors if f"{split}/recall_{e}" in job.final]
            for extractor in found:
                point = (job.model or "?", job.final[f"{split}/recall_{extractor}"], job.final[prefix + extractor])
                by_extractor.setdefault(extractor, []).append(point)
            if found:
                break
    paths = []
    for extractor, points in sorted(by_extractor.items()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for model in sorted({m for m, _, _ in points}):
            ax.scatter([r for m, r, _ in points if m == model], [p for m, _, p in points if m == model], label=model)
        ax.set(xlabel=f"recall ({extractor}): covers modes", ylabel=f"precision ({extractor}): looks real",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="precision against recall")
        ax.legend(title="model")
        paths.append(_save(fig, out / f"precision_recall_{_safe_name(extractor)}.png"))
    return paths


def _fmt(value: Any, md: bool, width: int = 100) -> str:
    """A table cell: full precision in CSV; 4 significant digits and one short line in Markdown."""
    if value is None:
        return ""
    if md and isinstance(value, str) and len(value) > 8 and _to_float(value) is not None:
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


def _optuna_lines(sweep_dir: Path, jobs: Sequence[Job]) -> list[str]:
    results = _load_yaml(sweep_dir / "optimization_results.yaml")
    if results is None or "best_value" not in results:
        return []
    params = OmegaConf.to_container(results.best_params)
    match = [job.name for job in jobs if all(job.overrides.get(k) == str(v) for k, v in params.items())]
    where = f" (job {match[0]})" if match else ""
    return [f"Optuna best value: {results.best_value:.6g} with "
            f"{', '.join(f'{k}={v}' for k, v in params.items())}{where}."]


def write_report(sweep_dir: Path, out: Optional[Path] = None, metrics: Optional[Sequence[str]] = None) -> Path:
    """report.md, report.csv and the plots for a sweep; returns the Markdown file."""
    import matplotlib

    matplotlib.use("Agg")
    sweep_dir = Path(sweep_dir)
    jobs = read_sweep(sweep_dir)
    out = Path(out) if out is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    objectives = list(dict.fromkeys(job.objective for job in jobs if job.objective))
    chosen = [m for m in (metrics or default_metrics(jobs)) if m not in objectives]
    header, rows = table(jobs, [*objectives, *chosen])
    write_csv(out / "report.csv", header, rows)
    plots = plot_objective(jobs, out) + plot_fid_vs_bpd(jobs, out) + plot_precision_recall(jobs, out)

    lines = [f"# Sweep {sweep_dir.name}", "", f"`{sweep_dir}`: {summary(jobs)}."]
    if objectives:
        modes = {job.objective_mode for job in jobs if job.objective}
        lines.append(f"Objective (what genlab-train returns): best {', '.join(objectives)} ({'/'.join(sorted(modes))}).")
    best = best_job(jobs)
    if best is not None:
        lines.append(f"Best job: {best.name}, {best.objective} = {best.objective_value:.6g}.")
    lines += _optuna_lines(sweep_dir, jobs)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v, md=True) for v in row) + " |" for row in rows]
    for status, title in NEEDS_ATTENTION.items():
        listed = [job for job in jobs if job.status == status]
        if listed:
            lines += ["", f"## {title}", ""]
            lines += [f"- {job.name}: {_fmt(job.error or 'see its log', md=True, width=1000)}" for job in listed]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (outputs/<task>/multirun/<run>)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep directory)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metrics to show besides the objective (default: bits/dim and FID, val and test)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, args.out, args.metrics)
    except NotASweep as err:
        print(f"genlab-report: error: {err}", file=sys.stderr)
        return 2
    jobs = read_sweep(args.sweep_dir)
    print(f"{summary(jobs)}; wrote {path} and {path.with_suffix('.csv')}")
    for job in jobs:
        if job.status in NEEDS_ATTENTION or job.error:
            print(f"  {job.status}: {job.name}: {job.error or 'see its log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
