"""Clusters: a 2-node x 2-process DDP job run on this machine the way SLURM starts one, the SLURM
dry run, the CPUs and the precision a job gets, and the log file of each rank."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import hydra
import pytest
from omegaconf import OmegaConf

from genlab.cluster import data_workers, precision_for, rank_log_file, srun_environment
from genlab.config import CONF_DIR
from genlab.evaluate import evaluate
from hydra_plugins.genlab_launcher import SlurmLauncher, sbatch_script

from conftest import compose_cfg

# 2 nodes x 2 tasks on the CPU; two epochs of 4 steps, so that a kill after the first
# checkpoint leaves training to resume
JOB = ["hardware=slurm", "hardware.nodes=2", "hardware.gpus_per_node=2", "trainer.accelerator=cpu",
       "trainer.precision=32-true", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
       "trainer.check_val_every_n_epoch=1", "callbacks.fid.num_samples=200", "logger=csv",
       "trainer.enable_progress_bar=false"]
# every scheduler knob, and the sbatch line each must give
KNOBS = {
    "hardware.partition=gpu": "#SBATCH --partition=gpu",
    "hardware.account=proj42": "#SBATCH --account=proj42",
    "hardware.qos=high": "#SBATCH --qos=high",
    "hardware.constraint=a100|h100": "#SBATCH --constraint='a100|h100'",
    "hardware.gres=nvme:100": "#SBATCH --gres=nvme:100",
    "hardware.exclusive=true": "#SBATCH --exclusive\n",
    "hardware.time_min=30": "#SBATCH --time=30",
    "hardware.mem_gb=8": "#SBATCH --mem=8GB",
    "hardware.cpus_per_task=3": "#SBATCH --cpus-per-task=3",
    "hardware.signal_delay_s=60": "#SBATCH --signal=USR2@60",
    'hardware.setup=["module load cuda/12.8","source /opt/venv/bin/activate"]':
        "\nmodule load cuda/12.8\nsource /opt/venv/bin/activate\n",
    "hardware.additional_parameters={mail-user: me@lab.org, mail-type: END}":
        "#SBATCH --mail-type=END\n#SBATCH --mail-user=me@lab.org",
}
LAYOUT = ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_sbatch_script_has_a_directive_for_every_knob(tmp_path):
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose("train", overrides=[*JOB, *KNOBS, f"hydra.sweep.dir={tmp_path}", "hydra.job.name=train"],
                            return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    script = sbatch_script({k: v for k, v in params.items() if k != "_target_"})
    for directive in [*KNOBS.values(), *LAYOUT]:
        assert directive in script, directive
    assert "srun --unbuffered" in script and "submitit.core._submit" in script
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 2)
    shared = SlurmLauncher(**{k: v for k, v in params.items() if k != "_target_"} | {"exclusive": False})
    assert "--exclusive" not in sbatch_script(shared.params)  # not --exclusive=False


def test_hardware_slurm_composes_with_the_local_submitit_launcher(tmp_path):
    """It failed with "Key 'partition' not in 'LocalQueueConf'"."""
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose("train", overrides=["hardware=slurm", "hardware.partition=gpu",
                                                "hydra/launcher=submitit_local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


@pytest.mark.parametrize("capability, precision", [
    (None, "32-true"), ((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")])
def test_precision_follows_the_gpu_capability(capability, precision):
    assert precision_for(capability) == precision


def test_the_profile_precision_can_be_overridden(tmp_path):
    cfg = compose_cfg(overrides=["hardware=slurm", "trainer.precision=16-mixed"], output_dir=tmp_path)
    assert cfg.trainer.precision == "16-mixed"


def test_data_workers_follow_the_cpus_slurm_grants(monkeypatch, tmp_path):
    granted = min(6, len(os.sched_getaffinity(0)))  # SLURM's grant, within the cpuset the task runs in
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert data_workers() == granted - 1
    assert compose_cfg(overrides=["hardware=slurm"], output_dir=tmp_path).dataset.num_workers == granted - 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert compose_cfg(overrides=["hardware=slurm"], output_dir=tmp_path).dataset.num_workers == 0
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert data_workers() == len(os.sched_getaffinity(0)) - 1


def test_only_rank_0_writes_the_log_file_unless_asked(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert rank_log_file("/run/train.log") == "/run/train.log"
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert rank_log_file("/run/train.log") == os.devnull
    assert rank_log_file("/run/train.log", True) == "/run/train.rank3.log"


@pytest.mark.slow
def test_two_nodes_of_two_ranks_fail_cleanly_resume_under_the_dry_run_and_match_one_process(tmp_path):
    """Four ranks started as srun starts them (2 nodes x 2 tasks, gloo): one is killed, the job
    fails and records it; the SLURM dry run of the same job (every knob set) prints its script,
    resumes it here under submitit's local executor and completes it in the one run directory;
    its test metrics equal one process's evaluation of the same checkpoint."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    port = str(free_port())
    command = [sys.executable, "-m", "genlab.train", *JOB, f"hydra.run.dir={run}"]
    ranks = [subprocess.Popen(command, env=env(**srun_environment(rank, 2, 2, "4242"), MASTER_PORT=port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in range(4)]
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.02)
        ranks[2].send_signal(signal.SIGKILL)  # rank 2: the first task of the second node
        codes = [rank.wait(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert codes[2] == -signal.SIGKILL and all(code == 1 for i, code in enumerate(codes) if i != 2), codes
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert "Connection" in json.loads((run / "FAILED.json").read_text())["message"]

    dry = subprocess.run([sys.executable, "-m", "genlab.train", "-m", *JOB, *KNOBS, "hardware.dry_run=true",
                          f"hydra.sweep.dir={sweep}"], env=env(), capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    script = (sweep / ".submitit" / "dry_run.sbatch").read_text()
    assert script in dry.stdout
    for directive in [*KNOBS.values(), *LAYOUT]:
        assert directive in script, directive
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and not (run / "FAILED.json").exists()
    log = (run / "train.log").read_text()
    assert "resuming the run" in log
    assert log.count("objective val/bpd") == 1  # rank 0's lines only, each once
    # one run directory, one metrics.json, no log file of another rank
    assert [p.parent for p in tmp_path.rglob("config_resolved.yaml")] == [run]
    assert list(tmp_path.rglob("metrics.json")) == [run / "metrics.json"]
    assert list(tmp_path.rglob("*.rank*.log")) == []

    best = next((run / "checkpoints").glob("best-*.ckpt"))
    one = evaluate(compose_cfg("eval", [f"ckpt={best}", "hardware=cpu", "logger=none"], tmp_path / "one"))
    four = metrics["final"]
    assert four["test/bpd"] == pytest.approx(one["test/bpd"], rel=1e-6)
    assert four["test/fid_classifier"] == pytest.approx(one["test/fid_classifier"], rel=1e-5)
