"""Runs that lose nothing: automatic resume, preemption, atomic checkpoints, NaN stops."""

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from genlab.checkpoint import AtomicCheckpointIO, read_checkpoint
from genlab.entry import entry_point
from genlab.errors import CheckpointError, RunDirectoryInUse, TrainingDiverged
from genlab.models.vae import VAE
from genlab.resume import plan_start
from genlab.train import train
from genlab.utils import atomic_write_json

from conftest import compose_cfg

TRAIN_SECTIONS = ("dataset", "model", "sampler", "callbacks", "logger", "trainer")
# A validation every 2 epochs (its checkpoints are written at the validation's end, as with the
# default settings), EMA on, a last.ckpt every 7 steps (an epoch of digits is 23 steps), the test
# after fit. Checkpoints: 7, 14, ..., 42, 46 (validation), 49, ..., 91, 92 (validation), 98, ...,
# 112, 115 (end of training).
RESUMABLE = ["dataset=digits", "model=vae", "seed=3", "logger=csv",
             "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=2", "trainer.log_every_n_steps=1",
             "callbacks.fid=null", "callbacks.samples=null", "callbacks.lr_monitor=null",
             "callbacks.bpd.max_examples=64", "callbacks.last_checkpoint.every_n_train_steps=7",
             "test=true", "trainer.enable_progress_bar=false"]
CHECKPOINT_NAMES = re.compile(r"last\.ckpt|best-epoch\d{3}-step\d{6}\.ckpt")


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


def saved_step(run_dir: Path) -> int:
    """The training step of the run's last.ckpt (-1 before the first); memory-mapped, cheap."""
    try:
        return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"]
    except FileNotFoundError:
        return -1


def metrics_final(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"  # written from the first epoch's end on
    return json.loads(path.read_text())["final"] if path.exists() else {}


def checkpoint_files(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_same_result(run_dir: Path, reference: Path) -> None:
    """Final weights, metrics.json (final and best, test values included) and CSV history."""
    expected, got = weights(reference), weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    metrics = lambda d: json.loads((d / "metrics.json").read_text())  # noqa: E731
    assert metrics(run_dir)["status"] == "completed"
    assert metrics(run_dir)["final"] == metrics(reference)["final"]
    assert metrics(run_dir)["best"] == metrics(reference)["best"]
    # Each step logged exactly once, with the same values as the uninterrupted run.
    assert history(run_dir) == history(reference)
    assert (run_dir / "history.json").read_text() == (reference / "history.json").read_text()


class Watched:
    """A real training process, watched through what it prints and writes, killed with SIGKILL
    at the moment the test waits for."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.process = subprocess.Popen(cli(run_dir), env=env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def printed(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.lines)

    def kill_when(self, moment: Callable[[], bool], what: str) -> None:
        deadline = time.time() + 300
        while not moment():
            assert self.process.poll() is None, f"the run ended before {what}:\n{''.join(self.lines)[-3000:]}"
            assert time.time() < deadline, f"no {what} within 300 s"
            time.sleep(0.001)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.reader.join()


@pytest.mark.slow
def test_kill_9_at_many_moments_then_rerun_resumes_exactly(whole, tmp_path):
    """The same command, killed with SIGKILL again and again at moments read from its output and
    its run directory (after and during checkpoint saves, during validations, right after the
    checkpoint written at a validation's end, before and during the test), then once more to the
    end: the result equals the uninterrupted run's, and the checkpoint folder holds one
    last.ckpt and no -vN copies at every moment."""
    run = tmp_path / "killed"

    def saving(watched: Watched) -> Callable[[], bool]:
        # a temporary file of this process's own (a killed save's is removed as the run starts)
        before = set((run / "checkpoints").glob(".*.tmp"))
        return lambda: bool(set((run / "checkpoints").glob(".*.tmp")) - before)

    moments: list[tuple[str, Callable[[Watched], Callable[[], bool]]]] = [
        ("after the first step checkpoint", lambda w: lambda: saved_step(run) >= 7),
        ("during a checkpoint save", saving),
        ("mid-epoch after resuming", lambda w: lambda: saved_step(run) >= 28),
        ("during a validation", lambda w: w.printed("bits/dim (vae) is an upper bound")),
        ("right after the checkpoint of a validation's end", lambda w: lambda: saved_step(run) == 46),
        ("during a checkpoint save after resuming from it", saving),
        ("during the second validation", lambda w: w.printed("bits/dim (vae) is an upper bound")),
        ("in the last epoch", lambda w: lambda: saved_step(run) >= 105),
        ("right after the end-of-training checkpoint", lambda w: lambda: saved_step(run) == 115),
        ("as the test starts", lambda w: w.printed("testing the best checkpoint")),
        ("during the test", lambda w: w.printed("Loaded model weights from the checkpoint")),
        ("after the test, before the run is marked completed", lambda w: lambda: "test/bpd" in metrics_final(run)),
    ]
    resumed_from, checked_validation_end = [], False
    for what, moment in moments:
        watched = Watched(run)
        watched.kill_when(moment(watched), what)
        resumed_from.append(re.findall(r"resuming the run in \S+ from \S+", "".join(watched.lines)))
        if what == "right after the checkpoint of a validation's end":
            # the checkpoint written at a validation's end (last.ckpt with the default settings): a
            # resume from it used to end with other metrics (the next epoch's data loader had drawn
            # from the global generator before the saved state was put back); the next attempt
            # resumes from it, and the final result below must still equal the uninterrupted run's
            checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
            assert checkpoint["global_step"] == 46 and "val/bpd" in checkpoint["genlab"]["metrics"]["final"]
            checked_validation_end = True
        metrics = run / "metrics.json"  # written from the first epoch's end on
        assert not metrics.exists() or json.loads(metrics.read_text())["status"] != "completed", what
        # one last.ckpt, no -vN copy, at most the killed save's temporary file besides
        names = [n for n in checkpoint_files(run) if not (n.startswith(".") and n.endswith(".tmp"))]
        assert all(CHECKPOINT_NAMES.fullmatch(n) for n in names) and "last.ckpt" in names, (what, names)

    final = subprocess.run(cli(run), env=env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same_result(run, whole)
    assert checkpoint_files(run) == checkpoint_files(whole)  # last.ckpt, one best-*, no temporary file
    assert len(checkpoint_files(run)) == 2
    assert all(resumed_from[1:]), resumed_from  # every attempt after the first resumed
    assert checked_validation_end


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
    assert (run_dir / "history.json").read_text() == (reference / "history.json").read_text()


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
    # a foreground command's SIGINT handling, even when the suite itself runs as a background job
    # (whose children inherit SIGINT ignored, and rightly ignore it)
    process = subprocess.Popen(cli(stopped), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
    # while the first runs ("resuming" a live run): the winner is held stopped (SIGSTOP) meanwhile,
    # so that on a fast machine it cannot finish before the third process looks.
    together = [start(), start()]
    wait_for(run_dir / ".genlab.lock", together[0])
    while all(p.poll() is None for p in together):
        time.sleep(0.01)
    loser, winner = together if together[0].poll() is not None else together[::-1]
    assert winner.poll() is None, "the winner finished before the loser was refused"
    winner.send_signal(signal.SIGSTOP)
    try:
        third = start()
        third.wait(timeout=300)
    finally:
        winner.send_signal(signal.SIGCONT)
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


def test_resuming_from_a_checkpoint_whose_weights_no_longer_fit_is_refused_naming_it(tmp_path, capsys):
    """A run killed under an older genlab whose model has since gained a weight (as the Diagonal
    BiLSTM's image path did): one line naming the checkpoint, before fit; the checkpoint is kept."""
    overrides = ["logger=none", "trainer.max_epochs=1", "callbacks=minimal", "trainer.limit_train_batches=2", "test=false"]
    train(compose_cfg(overrides=overrides, output_dir=tmp_path))
    (tmp_path / "metrics.json").write_text('{"status": "running"}')  # as if it had been killed
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    dropped = sorted(checkpoint["state_dict"])[0]
    del checkpoint["state_dict"][dropped]  # what the older version did not have
    torch.save(checkpoint, last)
    before = last.read_bytes()
    with pytest.raises(SystemExit):
        entry_point(train, TRAIN_SECTIONS)(compose_cfg(overrides=overrides, output_dir=tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"genlab: error: the run's checkpoint {last} holds"), err
    assert f"{dropped}: only here" in err[0]
    assert last.read_bytes() == before  # (the attempt is recorded as failed, with that line)


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


SHORT_RUN = ["logger=none", "callbacks=minimal", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
             "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=32",
             "callbacks.last_checkpoint.every_n_train_steps=2", "test=false", "trainer.enable_progress_bar=false"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB file system (tmpfs): room for one checkpoint of the test VAE (2.1 MiB), not two."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_reported_as_such_and_the_previous_checkpoint_loads(small_disk, capsys):
    run = small_disk / "run"
    cfg = compose_cfg(overrides=SHORT_RUN, output_dir=run)
    with pytest.raises(SystemExit) as stopped:
        entry_point(train, TRAIN_SECTIONS)(cfg)
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab: error: out of disk space while saving the checkpoint "), err
    assert "previous checkpoint there is kept" in err[0] and "Traceback" not in err[0]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2  # the one that fitted
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_files_follow_the_umask(tmp_path):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o027, 0o640)):
        previous = os.umask(umask)
        try:
            atomic_write_json(tmp_path / f"metrics-{umask:o}.json", {"status": "running"})
            AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / f"last-{umask:o}.ckpt")
        finally:
            os.umask(previous)
        for name in (f"metrics-{umask:o}.json", f"last-{umask:o}.ckpt"):
            assert (tmp_path / name).stat().st_mode & 0o777 == mode, (name, oct(umask))
    # rewriting a file keeps the mode its owner gave it, as writing it in place would
    os.chmod(tmp_path / "metrics-22.json", 0o664)
    atomic_write_json(tmp_path / "metrics-22.json", {"status": "completed"})
    assert (tmp_path / "metrics-22.json").stat().st_mode & 0o777 == 0o664


@pytest.fixture
def interrupted_run(tmp_path) -> tuple[Path, object]:
    """A short real run (made under umask 027), marked unfinished as if killed."""
    cfg = compose_cfg(overrides=SHORT_RUN, output_dir=tmp_path)
    previous = os.umask(0o027)
    try:
        train(cfg)
    finally:
        os.umask(previous)
    for name in ("metrics.json", "config_resolved.yaml", "checkpoints/last.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    atomic_write_json(tmp_path / "metrics.json", {**metrics, "status": "running"})
    return tmp_path, cfg


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_an_unreadable_last_checkpoint_gives_way_to_the_newest_readable_one(interrupted_run, damage, caplog):
    run, cfg = interrupted_run
    last = run / "checkpoints" / "last.ckpt"
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    best_bytes = best.read_bytes()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2] if damage == "truncated" else b"")
    damaged_bytes = last.read_bytes()
    with caplog.at_level(logging.WARNING, logger="genlab"):
        plan = plan_start(run, cfg)
    assert f"{last} cannot be used" in caplog.text and f"resuming from {best.name}" in caplog.text
    # last.ckpt is now the newest readable state (the damaged file kept beside it); best-* untouched
    assert plan.action == "resume" and plan.ckpt_path == str(last) and last.read_bytes() == best_bytes
    assert (run / "checkpoints" / "last.ckpt.damaged").read_bytes() == damaged_bytes
    if damage == "truncated":  # and the resumed run finishes from there
        assert entry_point(train, TRAIN_SECTIONS)(cfg) is not None
        assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
        assert read_checkpoint(last)["global_step"] == 6
    assert best.read_bytes() == best_bytes


def test_no_readable_checkpoint_stops_with_one_line_naming_the_file(interrupted_run, capsys):
    run, cfg = interrupted_run
    for path in (run / "checkpoints").glob("*.ckpt"):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SystemExit):
        entry_point(train, TRAIN_SECTIONS)(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"genlab: error: {run / 'checkpoints' / 'last.ckpt'} cannot be read"), err
    assert "Restore last.ckpt from a copy, or move the damaged files" in err[0]


def test_a_killed_save_leaves_a_temporary_file_that_the_next_start_removes(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, torch\n"
        "from genlab.utils import atomic_file\n"  # what AtomicCheckpointIO writes with
        "with atomic_file(sys.argv[1], 'wb') as file:\n"
        "    torch.save({'global_step': 3, 'w': torch.ones(3)}, file)\n"
        "saving = atomic_file(sys.argv[1], 'wb')\n"
        "file = saving.__enter__()\n"
        "file.write(b'the start of the next checkpoint'); file.flush()\n"
        "print('saving', flush=True); time.sleep(600)\n"), str(checkpoint)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "saving"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (orphan,) = (tmp_path / "checkpoints").glob(".last.ckpt.*.tmp")
    (tmp_path / "metrics.json").write_text('{"status": "running"}')

    plan = plan_start(tmp_path, compose_cfg(overrides=["logger=none"], output_dir=tmp_path))
    assert plan.action == "resume" and plan.ckpt_path == str(checkpoint)
    assert not orphan.exists()
    assert torch.equal(torch.load(checkpoint, weights_only=True)["w"], torch.ones(3))


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


@pytest.mark.slow
def test_a_step_checkpoint_at_the_last_batch_of_an_epoch_resumes_exactly(whole, tmp_path):
    """A step checkpoint (or a signal) that falls on an epoch's last batch: one saved there, after
    the step but before the epoch's end, did not resume exactly; it is written at the next step."""
    run_dir = tmp_path / "run"
    command = cli(run_dir, "callbacks.last_checkpoint.every_n_train_steps=23")  # an epoch is 23 steps
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while saved_step(run_dir) < 23 and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert saved_step(run_dir) == 24, "the save due at step 23 (an epoch's last batch) moves to step 24"
    subprocess.run(command, env=env(), check=True, capture_output=True, timeout=600)
    assert_same_as(run_dir, whole)
