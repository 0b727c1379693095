"""One owner per run directory, and commands that must not touch a run that is not theirs."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genlab.entry import entry_point
from genlab.errors import RunDirectoryLocked
from genlab.evaluate import evaluate
from genlab.lock import LOCK_NAME, lock_run_directory
from genlab.sample import sample

from conftest import compose_cfg

TINY = ["dataset=digits", "model=vae", "logger=csv", "callbacks=minimal", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=32", "trainer.enable_progress_bar=false"]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genlab.train", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env(), timeout=600)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file under ``root``: content hash, size, modification time and mode; every folder
    by name (a folder's own mtime moves when the lock file comes and goes)."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = ("dir",)
        else:
            stat = path.stat()
            state[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns, stat.st_mode)
    return state


def test_a_held_lock_refuses_naming_the_directory_and_holder_and_goes_with_a_killed_holder(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom genlab.lock import lock_run_directory\n"
         f"lock_run_directory({str(tmp_path)!r}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLocked) as refused:
            lock_run_directory(tmp_path)
        message = f"the run directory {tmp_path} is in use by another genlab process (PID {holder.pid})"
        assert str(refused.value).startswith(message)
        # genlab-eval and genlab-sample write into their run directories too: they take its lock
        for name, fn in (("eval", evaluate), ("sample", sample)):
            with pytest.raises(SystemExit) as exit_status:
                entry_point(fn, ())(compose_cfg(name, [f"ckpt={tmp_path / 'x.ckpt'}"], output_dir=tmp_path))
            assert exit_status.value.code == 1
            assert capsys.readouterr().err == f"genlab: error: {refused.value}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with the process: no stale lock, no waiting.
    start = time.monotonic()
    held = lock_run_directory(tmp_path)
    assert time.monotonic() - start < 1
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert lock_run_directory(tmp_path) is held  # re-entrant in one process
    held.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_mistyped_rerun_leaves_every_file_of_a_finished_run_unchanged(tmp_path):
    run_dir = tmp_path / "run"
    first = train(run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(run_dir)
    assert {"metrics.json", "config_resolved.yaml", ".hydra/config.yaml", "train.log", "checkpoints/last.ckpt"} <= set(before)

    mistakes = {
        "seed=1.5": "config key 'seed' must be an integer, got 1.5",  # fails genlab's config checks
        "objective=val/nope": "holds a run with a different config",  # a valid value, another run's
    }
    for override, message in mistakes.items():
        result = train(run_dir, override)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.count("genlab: error:") == 1 and message in result.stderr, result.stderr[-3000:]
        assert snapshot(run_dir) == before, override

    # The right command: the run is complete, nothing is tested again or rewritten.
    again = train(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is already completed" in again.stdout
    after = snapshot(run_dir)
    assert after.pop("train.log")[0] != before.pop("train.log")[0]  # it says so in the log, and that is all
    assert after == before


@pytest.mark.slow
def test_a_mistyped_rerun_of_a_sweep_leaves_every_file_of_its_finished_jobs_unchanged(tmp_path):
    """Hydra writes a job's .hydra/ (its overrides, read by genlab-report) and opens its log before
    genlab runs: a sweep run again into its directory with a mistake must not rewrite either."""
    sweep_dir = tmp_path / "sweep"

    def sweep(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "genlab.train", "-m", *TINY, "seed=3,4", *overrides,
                               f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, env=env(), timeout=600)

    first = sweep()
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = [sweep_dir / "0", sweep_dir / "1"]
    before = [snapshot(job) for job in jobs]
    assert all({".hydra/overrides.yaml", "train.log", "metrics.json"} <= set(state) for state in before)

    mistyped = sweep("test=maybe")
    assert [snapshot(job) for job in jobs] == before
    assert mistyped.stderr.count("genlab: error: job refused") == 2, mistyped.stderr[-3000:]
    assert "test='maybe' must be true or false" in mistyped.stderr


@pytest.mark.parametrize("status, expected", [("running", "interrupted"), ("completed", "completed")])
def test_a_signal_marks_a_running_run_interrupted_but_never_a_completed_one(tmp_path, status, expected):
    """A SIGTERM that arrives while a finished run closes its loggers must not turn the result
    into an interrupted run (a re-run would test it again and rewrite its metrics)."""
    import json

    from genlab.entry import _mark_interrupted
    from genlab.errors import Interrupted

    (tmp_path / "metrics.json").write_text(json.dumps({"status": status, "final": {"val/bpd": 1.5}, "best": {}}))
    _mark_interrupted(tmp_path, Interrupted(signal.SIGTERM))
    recorded = json.loads((tmp_path / "metrics.json").read_text())
    assert recorded["status"] == expected
    assert recorded["final"] == {"val/bpd": 1.5}
    assert ("signal" in recorded) == (expected == "interrupted")
