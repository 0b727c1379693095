"""Benchmark: what resuming costs, and what a checkpoint costs to write.

    .venv/bin/python bench/resume.py [--repeats 3] [--model-experiment ddpm_cifar10]

1. Time from the command to the first training step: a fresh start against a resume of the
   same run (same command, same run directory, from its ``last.ckpt``), alternated so that the
   machine's load hits both alike. VAE on the 10,000 real MNIST images (../shared/data/mnist).
2. Checkpoint save time and size for the largest model: genlab's atomic writer (temporary file,
   fsync, rename) against Lightning's plain writer, alternated, on the same checkpoint (model,
   Adam state). Written into a temporary directory on the same disk as the runs.

Results go to bench/results/resume.json; bench/RESULTS.md has the write-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
class FirstStep(pl.Callback):
    """Records when the first training step of this process starts; with GENLAB_BENCH_STOP set,
    stops the process right there (the rest is not what is measured)."""

    def __init__(self, path: str) -> None:
        self.path, self.seen = path, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen:
            return
        self.seen = True
        Path(self.path).write_text(json.dumps({"first_step": time.time()}))
        if os.environ.get("GENLAB_BENCH_STOP"):
            os._exit(0)


COMMON = ["experiment=vae_mnist", "dataset.pool=test", "dataset.download=false", "logger=csv", "callbacks=minimal", "trainer.enable_progress_bar=false",
          "callbacks.last_checkpoint.every_n_train_steps=1"]


def _run(run_dir: Path, data: Path, marker: Path, *extra: str, stop: bool = True) -> float:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **({"GENLAB_BENCH_STOP": "1"} if stop else {})}
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "genlab.train", *COMMON, f"dataset.root={data}", *extra,
         "+callbacks.first_step._target_=bench.resume.FirstStep",
         f"+callbacks.first_step.path={marker}", f"hydra.run.dir={run_dir}"],
        env=env, check=True, capture_output=True, cwd=REPO,
    )
    return json.loads(marker.read_text())["first_step"] - start


def resume_overhead(tmp: Path, repeats: int) -> dict[str, object]:
    data = tmp / "mnist"
    (data / "MNIST" / "raw").mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        shutil.copy(f, data / "MNIST" / "raw" / f.name)
    # A run that stopped after 2 steps (its last.ckpt written), as if it had been killed.
    stopped, marker = tmp / "stopped", tmp / "first-step.json"
    _run(stopped, data, marker, "trainer.max_steps=2", "test=false", stop=False)
    metrics = stopped / "metrics.json"
    fresh, resumed = [], []
    for i in range(repeats):
        fresh.append(_run(tmp / f"fresh{i}", data, marker, "trainer.max_steps=4", "test=false"))
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "status": "running"}))
        resumed.append(_run(stopped, data, marker, "trainer.max_steps=4", "test=false"))
    ckpt_mb = (stopped / "checkpoints" / "last.ckpt").stat().st_size / 2**20
    return {"fresh_s": fresh, "resumed_s": resumed, "fresh_median_s": statistics.median(fresh),
            "resumed_median_s": statistics.median(resumed),
            "resume_minus_fresh_s": statistics.median(resumed) - statistics.median(fresh),
            "checkpoint_mb": ckpt_mb}


def checkpoint_cost(tmp: Path, experiment: str, repeats: int) -> dict[str, object]:
    from hydra import compose, initialize_config_dir
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    from genlab.checkpoint import AtomicCheckpointIO
    from genlab.config import CONF_DIR, instantiate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    model = instantiate(cfg.model, "model")
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():  # Adam's two moment buffers, as after a real step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "genlab": {}}
    params = sum(p.numel() for p in model.parameters())
    writers = {"atomic": AtomicCheckpointIO(), "lightning": TorchCheckpointIO()}
    times: dict[str, list[float]] = {name: [] for name in writers}
    for i in range(repeats):
        for name, writer in writers.items():
            path = tmp / f"{name}.ckpt"
            start = time.perf_counter()
            writer.save_checkpoint(checkpoint, path)
            times[name].append(time.perf_counter() - start)
    size_mb = (tmp / "atomic.ckpt").stat().st_size / 2**20
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"experiment": experiment, "parameters": params, "size_mb": size_mb, "times_s": times,
            "median_s": median, "atomic_over_lightning": median["atomic"] / median["lightning"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-experiment", default="ddpm_cifar10")
    args = parser.parse_args()
    out = REPO / "bench" / "results" / "resume.json"
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        result = {"resume": resume_overhead(Path(tmp), args.repeats),
                  "checkpoint": checkpoint_cost(Path(tmp), args.model_experiment, max(5, args.repeats))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
