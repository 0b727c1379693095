"""Automatic resume: re-running a command in a run directory carries that run on.

A run directory is in one of three states, read from what the run left there:

* new (nothing of a run in it): start from step 0;
* unfinished (``metrics.json`` says running, preempted, interrupted or failed): resume from
  ``checkpoints/last.ckpt`` with the same W&B run id, after checking that the config is the
  run's own. A ``last.ckpt`` that cannot be read (cut short by a crash or a copy) gives way to
  the newest checkpoint beside it that can, with a warning; where none can, the run stops with
  one line naming the file. An unfinished run without any checkpoint starts over, and says so;
* completed: nothing to train; the recorded objective is returned (a re-run sweep skips its
  finished jobs).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from genlab.checkpoint import StoredModel, read_checkpoint
from genlab.errors import CheckpointError, RunDirectoryInUse, UntrustedConfig
from genlab.lock import holds_run
from genlab.trust import check_targets
from genlab.utils import atomic_file, atomic_write_text, flatten

log = logging.getLogger("genlab")

#: config keys that may change between the attempts of one run (extending or re-logging it)
MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "callbacks.cpu_budget.minutes",
              "trainer.enable_progress_bar",
              "logger", "paths", "tags", "test", "ckpt_path", "hardware", "hydra", "rank_logs",
              "dataset.num_workers")  # the workers follow the CPUs a requeued job is granted


@dataclass
class StartPlan:
    """What ``train`` does in its run directory."""

    action: str  # "new", "resume" or "completed"
    ckpt_path: Optional[str] = None
    #: the previous attempt's resolved config (resume and completed)
    previous: Optional[dict[str, Any]] = None
    #: metrics.json of the previous attempt (completed)
    metrics: Optional[dict[str, Any]] = None
    #: the model of an explicit ``ckpt_path=`` or of the checkpoint resumed: its weights must fit
    #: the model this run builds
    stored: Optional[StoredModel] = None


def plan_start(output_dir: Path, cfg: DictConfig) -> StartPlan:
    """Decide from the run directory's contents whether to start, resume or stop."""
    explicit = cfg.get("ckpt_path")
    metrics_file = output_dir / "metrics.json"
    if explicit is not None:
        if holds_run(output_dir):
            raise RunDirectoryInUse(
                f"ckpt_path={explicit} starts a new run from that checkpoint, but the run directory "
                f"{output_dir} already holds a run. Leave hydra.run.dir to its default, or drop "
                "ckpt_path= to resume the run in that directory from its own last checkpoint."
            )
        # a missing file, one that is not genlab's or one of another model is refused now
        stored = StoredModel.of(read_checkpoint(explicit, key="ckpt_path"), f"ckpt_path={explicit}")
        stored.check_target(cfg.model)
        return StartPlan("new", ckpt_path=str(explicit), stored=stored)
    if not holds_run(output_dir):
        remove_temporary_files(output_dir)  # an attempt killed before its first checkpoint
        return StartPlan("new")

    metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
    previous = _read_previous_config(output_dir)
    if previous is not None:
        check_same_run(previous, cfg, output_dir)
    if metrics.get("status") == "completed":
        return StartPlan("completed", previous=previous, metrics=metrics)
    remove_temporary_files(output_dir)
    checkpoint = resume_checkpoint(output_dir / "checkpoints")
    if checkpoint is not None:  # written by an older genlab, its weights may no longer fit: checked before fit
        return StartPlan("resume", ckpt_path=str(checkpoint), previous=previous, stored=_stored_model(checkpoint))
    log.warning(
        "the run directory %s holds an unfinished run (status %s) without a checkpoint to resume "
        "from: starting it over from step 0", output_dir, metrics.get("status", "unknown"))
    return StartPlan("new", previous=previous)


@rank_zero_only
def remove_temporary_files(output_dir: Path) -> None:
    """Remove the temporary files of saves a killed attempt never finished (``atomic_file``
    names them ``.<file>.<random>.tmp``); the files they were to replace are intact."""
    for folder in (output_dir, output_dir / "checkpoints", *output_dir.glob("csv/**/")):
        for path in folder.glob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                log.info("removed %s, left by a save that was interrupted", path)


def _training_step(path: Path) -> tuple[Optional[int], str]:
    """The training step the checkpoint at ``path`` holds, or None and why it cannot be loaded.
    Memory-mapped, so the tensors are not read; a file cut short fails all the same (a zip
    archive's directory is at its end)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many kinds on a damaged file
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty message'}"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("global_step"), int):
        return None, "it holds no training state"
    return checkpoint["global_step"], ""


def _stored_model(path: Path) -> Optional[StoredModel]:
    """What the checkpoint a run resumes from says about its model (None where it is not
    genlab's: Lightning then loads it as it is). Memory-mapped: the tensors are not read."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict) \
            and isinstance(checkpoint.get("genlab"), dict):
        return StoredModel.of(checkpoint, f"the run's checkpoint {path}")
    return None


def resume_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint an unfinished run resumes from: ``last.ckpt``; None where the folder holds
    no checkpoint.

    A ``last.ckpt`` that is missing or cannot be read is replaced by a copy of the newest other
    checkpoint that can (the damaged file is kept as ``last.ckpt.damaged``, the others are left
    as they are), so that ``last.ckpt`` stays the newest state even where the resumed run has
    nothing left to train. Where no checkpoint can be read, the run stops with one line.
    """
    last = folder / "last.ckpt"
    problem = "it is missing"
    if last.is_file():
        step, problem = _training_step(last)
        if step is not None:
            return last
    readable: list[tuple[int, Path]] = []
    damaged = [last.name] if last.is_file() else []
    for path in sorted(set(folder.glob("*.ckpt")) - {last}):
        step, _ = _training_step(path)
        if step is None:
            damaged.append(path.name)
        else:
            readable.append((step, path))
    if readable:
        step, newest = max(readable)
        log.warning("%s cannot be used (%s): resuming from %s (step %d), the newest checkpoint beside it "
                    "that can be read; it is copied to last.ckpt", last, problem, newest.name, step)
        _replace_last(last, newest)
        return last
    if damaged:
        raise CheckpointError(
            f"{last} cannot be read ({problem}) and no other checkpoint in {folder} can be "
            f"({', '.join(damaged)}): the run cannot be resumed. Restore last.ckpt from a copy, or move "
            "the damaged files out of that folder to start the run over from step 0."
        )
    return None


@rank_zero_only
def _replace_last(last: Path, newest: Path) -> None:
    if last.is_file():
        os.replace(last, last.with_name(last.name + ".damaged"))
    with atomic_file(last, "wb") as target, newest.open("rb") as source:
        shutil.copyfileobj(source, target)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirectoryInUse(
            f"{path} cannot be read ({err}); the run directory holds a run genlab cannot resume. "
            "Start a new run (leave hydra.run.dir to its default)."
        ) from None


def _read_previous_config(output_dir: Path) -> Optional[dict[str, Any]]:
    """The previous attempt's config: data, so a _target_ in it off genlab's allow-list is refused
    (and the run directory left as it is)."""
    path = output_dir / "config_resolved.yaml"
    if not path.is_file():
        return None
    saved = OmegaConf.load(path)
    previous = OmegaConf.to_container(saved)
    try:
        check_targets(saved, f"the run directory's config {path}")
    except UntrustedConfig as err:
        raise RunDirectoryInUse(f"{err} The run directory is left as it is.") from None
    return previous


def check_same_run(previous: dict[str, Any], cfg: DictConfig, output_dir: Path) -> None:
    """A run is resumed only with its own config: a changed model, dataset, seed or optimizer
    would silently splice two different experiments together."""
    current = OmegaConf.to_container(cfg, resolve=True)
    old, new = flatten(previous), flatten(current)
    changed = sorted(
        key for key in old.keys() | new.keys()
        if old.get(key) != new.get(key) and not any(key == m or key.startswith(m + ".") for m in MAY_CHANGE)
    )
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise RunDirectoryInUse(
            f"the run directory {output_dir} holds a run with a different config ({shown}"
            f"{'; ...' if len(changed) > 8 else ''}). Re-run the original command to resume it, or "
            "start a new run (leave hydra.run.dir to its default)."
        )


def reuse_logger_ids(cfg: DictConfig, previous: Optional[dict[str, Any]]) -> None:
    """The W&B run id: the previous attempt's (a resume continues the same W&B run), else new."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    old_id = ((previous or {}).get("logger") or {}).get("wandb", {}).get("id")
    if old_id is None:
        old_id = secrets.token_hex(6)  # W&B run ids: up to 64 characters of [a-z0-9]
    with open_dict(cfg):
        cfg.logger.wandb.id = old_id


@rank_zero_only
def truncate_csv_history(output_dir: Path, step: int) -> None:
    """Drop the CSV logger's rows logged after the checkpoint a run resumes from: the resumed
    run logs those steps again, so each step appears exactly once."""
    for path in output_dir.glob("csv/**/metrics.csv"):
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if (row.get("step") or "").isdigit() and int(row["step"]) < step]
        if len(kept) == len(rows):
            continue
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue())
        log.info("resume: dropped %d rows logged after step %d from %s", len(rows) - len(kept), step, path)
