"""World size 4 (2 "nodes" x 2 gloo processes, started with srun's variables) against world size 1
on this machine: the metrics, not the speed (four processes on two shared cores say nothing about
scaling).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.cluster_ws4 bench/out/cluster

Three runs of the same VAE on digits (4 epochs, FID on 1000 samples):
  * four ranks, 64 images per rank per step (a global batch of 256);
  * the four ranks' best checkpoint evaluated by one process (genlab-eval): the metrics must be equal;
  * one process trained with batch 256, the same global batch: close, not equal (the ranks see
    their shards of each shuffled epoch in another order).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from genlab.cluster import srun_environment

COMMON = ["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=1", "callbacks.fid.num_samples=1000",
          "logger=csv", "trainer.enable_progress_bar=false"]
FOUR = ["hardware=slurm", "hardware.nodes=2", "hardware.gpus_per_node=2", "trainer.accelerator=cpu",
        "trainer.precision=32-true"]


def main(out: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    four = out / "world4"
    start = time.time()
    ranks = [subprocess.Popen([sys.executable, "-m", "genlab.train", *FOUR, *COMMON, f"hydra.run.dir={four}"],
                              env={**env, **srun_environment(rank, 2, 2, "1"), "MASTER_PORT": port},
                              stdout=subprocess.DEVNULL) for rank in range(4)]
    assert [rank.wait() for rank in ranks] == [0, 0, 0, 0]
    wall4 = time.time() - start
    best = next((four / "checkpoints").glob("best-*.ckpt"))
    subprocess.run([sys.executable, "-m", "genlab.evaluate", f"ckpt={best}", "hardware=cpu", "logger=none",
                    f"hydra.run.dir={out / 'eval1'}"], env=env, check=True, stdout=subprocess.DEVNULL)
    start = time.time()
    subprocess.run([sys.executable, "-m", "genlab.train", "hardware=cpu", "dataset.batch_size=256", *COMMON,
                    f"hydra.run.dir={out / 'world1'}"], env=env, check=True, stdout=subprocess.DEVNULL)
    wall1 = time.time() - start
    rows = {name: json.loads((out / name / "metrics.json").read_text())["final"]
            for name in ("world4", "eval1", "world1")}
    keys = ["val/bpd", "val/fid_classifier", "test/bpd", "test/fid_classifier"]
    print("| metric | world size 4 | its best checkpoint, 1 process | trained by 1 process (batch 256) |")
    print("|---|---|---|---|")
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{rows[n][key]:.6f}" if key in rows[n] else "-"
                                          for n in ("world4", "eval1", "world1")) + " |")
    print(f"\nwall: world size 4 {wall4:.0f} s, world size 1 {wall1:.0f} s (load: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
