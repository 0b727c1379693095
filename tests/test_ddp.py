"""hardware=ddp_cpu: two gloo processes through the real command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genlab.train import train

from conftest import compose_cfg

pytestmark = pytest.mark.slow


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(compose_cfg(overrides=["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "logger=none",
                                 "callbacks.fid.num_samples=200"], output_dir=out))
    return out / "checkpoints" / "last.ckpt"


def test_two_processes_give_the_same_fid_and_bpd_as_one(checkpoint, tmp_path):
    common = [f"ckpt={checkpoint}", "callbacks.fid.num_samples=500", "callbacks.fid.chunk_size=100",
              "trainer.enable_progress_bar=false"]
    run_cli("genlab.evaluate", *common, "hardware=cpu", f"hydra.run.dir={tmp_path / 'one'}")
    run_cli("genlab.evaluate", *common, "hardware=ddp_cpu", f"hydra.run.dir={tmp_path / 'two'}")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["final"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["final"]
    # Both runs compute the same seeded chunks (only their owner differs) and gather them in
    # order, so the numbers agree up to float summation order across processes.
    assert two["test/bpd"] == pytest.approx(one["test/bpd"], rel=1e-6)
    assert two["test/fid_classifier"] == pytest.approx(one["test/fid_classifier"], rel=1e-5)
    # precision and recall come from the same gathered features: fractions of the samples, equal
    for name in ("test/precision_classifier", "test/recall_classifier"):
        assert two[name] == one[name]


def test_ddp_training_writes_one_run_directory(tmp_path):
    run_cli("genlab.train", "hardware=ddp_cpu", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
            "callbacks.fid.num_samples=200", "logger=csv", "trainer.enable_progress_bar=false",
            f"paths.log_dir={tmp_path}")
    runs = [p.parent for p in tmp_path.rglob(".hydra")]
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/bpd" in metrics["final"]
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert len(list(tmp_path.rglob("metrics.json"))) == 1


def test_a_ddp_sweep_runs_each_job_once_in_its_own_directory(tmp_path):
    """Lightning starts rank 1 by re-running the command line: in a sweep, rank 1 must join its
    job, not start the sweep again."""
    sweep = tmp_path / "sweep"
    result = run_cli("genlab.train", "-m", "hardware=ddp_cpu", "seed=0,1", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=4", "callbacks=minimal", "logger=csv",
                     "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={sweep}")
    output = result.stdout + result.stderr
    assert output.count("Launching 2 jobs") == 1, output[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and "test/bpd" in metrics["final"]
    # nothing else anywhere: no directories made by the second rank
    assert sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.iterdir()) == ["sweep"]
    assert len(list(tmp_path.rglob("metrics.json"))) == 2
    assert len(list(tmp_path.rglob("config_resolved.yaml"))) == 2
