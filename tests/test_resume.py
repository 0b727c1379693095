"""Runs that lose nothing: automatic resume, preemption, atomic checkpoints, NaN stops."""

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab.checkpoint
from genlab.checkpoint import read_checkpoint
from genlab.entry import entry_point
from genlab.errors import CheckpointError, RunDirectoryInUse, TrainingDiverged
from genlab.models.vae import VAE
from genlab.train import train

from conftest import compose_cfg

TRAIN_SECTIONS = ("dataset", "model", "sampler", "callbacks", "logger", "trainer")
# Validation every epoch, EMA on, a last.ckpt every 7 steps (an epoch of digits is 23 steps).
RESUMABLE = ["dataset=digits", "model=vae", "seed=3", "logger=csv",
             "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1",
             "callbacks.fid=null", "callbacks.samples=null", "callbacks.lr_monitor=null",
             "callbacks.bpd.max_examples=64", "callbacks.last_checkpoint.every_n_train_steps=7",
             "test=false", "trainer.enable_progress_bar=false"]


def cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "genlab.train", *RESUMABLE, *extra, f"hydra.run.dir={run_dir}"]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(cli(run_dir), env=env(), check=True, capture_output=True, timeout=600)
    return run_dir


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_exactly(whole, tmp_path):
    killed = tmp_path / "killed"

    process = subprocess.Popen(cli(killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)  # a few more steps, logged but not checkpointed
    process.send_signal(signal.SIGKILL)
    process.wait()
    status = json.loads((killed / "metrics.json").read_text())["status"] if (killed / "metrics.json").exists() else None
    assert status != "completed", "the run finished before it could be killed"
    killed_at = read_checkpoint(last)
    assert killed_at["global_step"] < 5 * 23

    rerun = subprocess.run(cli(killed), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the run" in (killed / "train.log").read_text()

    expected, got = weights(whole), weights(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    final = lambda d: json.loads((d / "metrics.json").read_text())  # noqa: E731
    assert final(killed)["status"] == "completed"
    assert final(killed)["final"] == final(whole)["final"]
    assert final(killed)["best"] == final(whole)["best"]
    # Each step logged exactly once, with the same values as the uninterrupted run.
    assert history(killed) == history(whole)


@pytest.mark.slow
def test_warning_signal_checkpoints_and_a_rerun_finishes_like_an_uninterrupted_run(whole, tmp_path):
    warned = tmp_path / "warned"
    with_wandb = "logger=[csv,wandb]"
    process = subprocess.Popen(cli(warned, with_wandb), env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (warned / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGUSR2)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1 and "preempted at step" in stderr, stderr[-3000:]
    assert not (warned / "FAILED.json").exists()
    metrics = json.loads((warned / "metrics.json").read_text())
    assert metrics["status"] == "preempted"
    stopped_at = read_checkpoint(warned / "checkpoints" / "last.ckpt")["global_step"]
    assert 7 <= stopped_at < 5 * 23

    subprocess.run(cli(warned, with_wandb), env=env(), check=True, capture_output=True, timeout=600)
    # the resumed attempt continues the same W&B run: two offline segments, one run id
    segments = sorted((warned / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({p.name.rsplit("-", 1)[1] for p in segments}) == 1
    for name, tensor in weights(whole).items():
        assert torch.equal(tensor, weights(warned)[name]), name
    assert json.loads((warned / "metrics.json").read_text())["final"] == json.loads((whole / "metrics.json").read_text())["final"]
    assert history(warned) == history(whole)


def assert_same_as(run_dir: Path, reference: Path) -> None:
    """Weights, metrics and CSV history equal to the reference run's."""
    for name, tensor in weights(reference).items():
        assert torch.equal(tensor, weights(run_dir)[name]), name
    metrics = lambda d: json.loads((d / "metrics.json").read_text())  # noqa: E731
    assert metrics(run_dir)["status"] == "completed"
    assert metrics(run_dir)["final"] == metrics(reference)["final"]
    assert metrics(run_dir)["best"] == metrics(reference)["best"]
    assert history(run_dir) == history(reference)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_the_step_record_the_run_and_a_rerun_finishes_it(whole, tmp_path, signum):
    """scancel, docker stop, Kubernetes (SIGTERM) and Ctrl+C (SIGINT): the step under way ends,
    last.ckpt is written at it, metrics.json says interrupted, exit status 128 + signal."""
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(cli(stopped), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(stopped / "checkpoints" / "last.ckpt", process)  # 7 training steps done
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, stderr[-3000:]
    found = re.search(rf"interrupted by {name} at step (\d+) and checkpointed", stderr)
    assert found, stderr[-3000:]
    step = int(found.group(1))
    assert 7 < step < 5 * 23
    assert read_checkpoint(stopped / "checkpoints" / "last.ckpt")["global_step"] == step
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == name
    assert not (stopped / "FAILED.json").exists()
    assert not list(stopped.rglob("*.tmp"))
    if signum == signal.SIGINT:
        return  # from here on the same path as SIGTERM: the re-run is tested once

    rerun = subprocess.run(cli(stopped), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming the run in {stopped}" in (stopped / "train.log").read_text()
    assert_same_as(stopped, whole)


@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused_and_the_first_finishes_undisturbed(whole, tmp_path):
    run_dir = tmp_path / "shared"
    start = lambda: subprocess.Popen(cli(run_dir), env=env(), stdout=subprocess.DEVNULL,  # noqa: E731
                                     stderr=subprocess.PIPE, text=True)
    # Two started together: one takes the directory, the other is refused at once. A third comes
    # while the first runs ("resuming" a live run).
    together = [start(), start()]
    wait_for(run_dir / ".genlab.lock", together[0])
    third = start()
    while all(p.poll() is None for p in together):
        time.sleep(0.01)
    loser, winner = together if together[0].poll() is not None else together[::-1]
    third.wait(timeout=300)
    assert winner.poll() is None, "the third process met a finished run, not a live one"
    for refused in (loser, third):
        stderr = refused.communicate()[1]
        assert refused.returncode == 1 and stderr.count("genlab: error:") == 1, stderr[-3000:]
        assert f"the run directory {run_dir} is in use by another genlab process (PID {winner.pid})" in stderr
        assert "Traceback" not in stderr

    _, stderr = winner.communicate(timeout=600)
    assert winner.returncode == 0, stderr[-3000:]
    assert_same_as(run_dir, whole)  # one history: each step logged once
    assert "resuming" not in (run_dir / "train.log").read_text()
    assert not (run_dir / ".genlab.lock").exists()


@pytest.mark.slow
def test_sigterm_stops_a_sweep_and_records_the_jobs_that_never_ran(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "genlab.train", "-m", *RESUMABLE, "trainer.max_epochs=1", "seed=3,4,5,6",
               f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(sweep / "1" / "checkpoints" / "last.ckpt", process)  # job 1 is training
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    interrupted = json.loads((sweep / "1" / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["signal"] == "SIGTERM"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # nothing started after
    record = json.loads((sweep / "INTERRUPTED.json").read_text())
    assert record["signal"] == "SIGTERM" and record["interrupted_job"] == "1"
    assert [(job["job"], [o for o in job["overrides"] if o.startswith("seed=")]) for job in record["not_run"]] == [
        ("2", ["seed=5"]), ("3", ["seed=6"])]
    assert "SIGTERM stopped the sweep during job 1; 2 jobs never ran" in stderr

    report = subprocess.run([sys.executable, "-m", "genlab.report", str(sweep)], capture_output=True, text=True,
                            env=env(), timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "4 jobs: 1 completed, 1 interrupted, 2 not run" in report.stdout
    assert "not run: 3: the sweep was stopped by SIGTERM before this job" in report.stdout
    with (sweep / "report.csv").open() as f:
        assert [(r["job"], r["seed"], r["status"]) for r in csv.DictReader(f)] == [
            ("0", "3", "completed"), ("1", "4", "interrupted"), ("2", "5", "not run"), ("3", "6", "not run")]


def test_a_completed_run_is_not_trained_again(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"precious")
    (tmp_path / "metrics.json").write_text('{"status": "completed", "best": {"val/bpd": 3.5}}')
    cfg = compose_cfg(overrides=["logger=none"], output_dir=tmp_path)
    assert entry_point(train, TRAIN_SECTIONS)(cfg) == 3.5
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"precious"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


def test_resuming_with_another_config_is_refused(tmp_path, capsys):
    first = compose_cfg(overrides=["logger=none", "trainer.max_epochs=1", "callbacks=minimal",
                                   "trainer.limit_train_batches=2", "test=false"], output_dir=tmp_path)
    train(first)
    (tmp_path / "metrics.json").write_text('{"status": "running"}')  # as if it had been killed
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    other = compose_cfg(overrides=["logger=none", "trainer.max_epochs=1", "callbacks=minimal",
                                   "trainer.limit_train_batches=2", "test=false", "model.latent_dim=8"],
                        output_dir=tmp_path)
    with pytest.raises(SystemExit):
        entry_point(train, TRAIN_SECTIONS)(other)
    err = capsys.readouterr().err
    assert "different config" in err and "model.latent_dim: 16 -> 8" in err
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before
    assert not (tmp_path / "FAILED.json").exists()


def test_an_explicit_ckpt_path_never_writes_into_a_run(tmp_path):
    (tmp_path / "metrics.json").write_text('{"status": "running"}')
    cfg = compose_cfg(overrides=["logger=none", f"ckpt_path={tmp_path / 'x.ckpt'}"], output_dir=tmp_path)
    with pytest.raises(RunDirectoryInUse, match="already holds a run"):
        train(cfg)


def test_ckpt_path_must_be_a_genlab_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    for path, message in ((tmp_path / "missing.ckpt", "no such checkpoint file"), (foreign, "not a genlab checkpoint")):
        cfg = compose_cfg(overrides=["logger=none", f"ckpt_path={path}"], output_dir=tmp_path / "run")
        with pytest.raises(CheckpointError, match=message):
            train(cfg)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = genlab.checkpoint.AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "genlab": {}}, path)

    def crash_midway(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(genlab.checkpoint.torch, "save", crash_midway)
    with pytest.raises(RuntimeError, match="killed while saving"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "genlab": {}}, path)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind

    def disk_full(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(genlab.checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="out of disk space .* previous checkpoint there is kept"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "genlab": {}}, path)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = VAE._neg_elbo_terms

    def nan_from_step_12(self, x, y):
        recon, kl = original(self, x, y)
        if self.training and self.global_step >= 12:
            recon = recon * float("nan")
        return recon, kl

    monkeypatch.setattr(VAE, "_neg_elbo_terms", nan_from_step_12)
    cfg = compose_cfg(overrides=["logger=none", "callbacks=minimal", "trainer.max_epochs=3",
                                 "callbacks.last_checkpoint.every_n_train_steps=5"], output_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match="not finite at step 12 .*loss=nan"):
        train(cfg)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.mark.slow
def test_submitit_jobs_checkpoint_on_the_warning_signal_requeue_and_finish(whole, tmp_path):
    """Hydra's submitit launcher with its local executor: real job processes, two jobs. The
    running ones get the warning signal once job 0 is mid-training: they checkpoint, requeue,
    resume and end as if never interrupted."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "genlab.train", "-m", *RESUMABLE, "seed=3,4",
               "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}"]
    sweep_process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    jobs = [sweep / "0", sweep / "1"]
    deadline = time.time() + 300
    # job 0 mid-training, job 1 at least inside its job (submitit's own handler is in place)
    while not ((jobs[0] / "checkpoints" / "last.ckpt").exists() and (jobs[1] / ".hydra").exists()) \
            and time.time() < deadline:
        time.sleep(0.01)
    found = subprocess.run(["pgrep", "-f", f"submitit.core._submit {sweep}"], capture_output=True, text=True)
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGUSR2)
    _, stderr = sweep_process.communicate(timeout=600)
    assert sweep_process.returncode == 0, stderr[-3000:]
    log = (jobs[0] / "train.log").read_text()
    assert "preempted at step" in log and "resuming the run" in log
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
    for name, tensor in weights(whole).items():
        assert torch.equal(tensor, weights(jobs[0])[name]), name
    assert json.loads((jobs[0] / "metrics.json").read_text())["final"] == json.loads((whole / "metrics.json").read_text())["final"]
    assert history(jobs[0]) == history(whole)
