"""`genlab-train --help` and config errors answer before torch and Lightning are imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(m for m in ("torch", "pytorch_lightning", "torchvision")
                                                             if m in sys.modules)), file=sys.stderr))
sys.argv = ["genlab-train", *sys.argv[1:]]
from genlab.train import main
main()
"""


def run_train(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


def imported(result: subprocess.CompletedProcess) -> list[str]:
    line = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")][-1]
    return json.loads(line[len("MODULES "):])


@pytest.mark.parametrize("args, says", [
    (["--help"], "== Configuration groups =="),
    (["model=nope"], "genlab: error: In 'train': Could not find 'model/nope'"),
    (["trainer.nope=1"], "genlab: error: Could not override 'trainer.nope'"),
])
def test_help_and_config_errors_come_before_torch_is_imported(args, says, tmp_path):
    result = run_train(*args, f"paths.output_dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert says in result.stdout + result.stderr
    assert result.returncode == (0 if args == ["--help"] else 1)
    assert imported(result) == []
    assert not (tmp_path / "run").exists()


def test_cpu_threads_follow_what_the_process_owns_and_who_shares_it(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from genlab.errors import ConfigError
    from genlab.threads import apply_cpu_threads, compute_threads, owned_cpus, processes_sharing

    cpus = owned_cpus({})
    mask, threads = os.sched_getaffinity(0), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = OmegaConf.create({"hardware": {"cpu_threads": None}, "trainer": {"accelerator": "cpu", "devices": 1}})
    try:
        os.sched_setaffinity(0, {min(mask)})  # this process may now run on one CPU
        torch.set_num_threads(4)
        assert apply_cpu_threads(cfg) == 1 == torch.get_num_threads()
    finally:
        os.sched_setaffinity(0, mask)
        torch.set_num_threads(threads)
    assert owned_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1  # the scheduler granted one
    assert compute_threads(None, 1, {}) == cpus
    assert compute_threads(None, 2 * cpus, {}) == 1  # more processes than CPUs: one each
    assert compute_threads(None, 1, {"OMP_NUM_THREADS": "3"}) is None  # the user's own setting stays
    assert compute_threads(5, 4, {}) == 5  # hardware.cpu_threads overrides
    with pytest.raises(ConfigError, match=r"hardware.cpu_threads=0 must be an integer >= 1"):
        compute_threads(0)
    ddp = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}})
    assert processes_sharing(ddp) == 2
    assert processes_sharing(OmegaConf.create({"trainer": {"accelerator": "gpu", "devices": 4}})) == 1
