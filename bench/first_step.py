"""Benchmark: from the command line to the first training step, and where the time goes.

    .venv/bin/python bench/first_step.py        # prints a table; results in bench/eval.md

1. The whole command (`genlab-train` with its defaults, W&B offline) in a fresh process, timed
   from before the process starts to the first `on_train_batch_start` (a callback added
   with a `+callbacks.` override that records the time and stops the run), interleaved with
   `python -c "import torch, pytorch_lightning"` (what no start can avoid).
2. The same start-up in phases, in one process: imports, config, data, model, FID extractor,
   loggers, trainer, first step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the phases measure this checkout's genlab, not the venv's editable one


class StopAtFirstStep(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        Path(self.path).write_text(json.dumps({"first_step": time.time()}))
        os._exit(0)  # stop right here: the rest of the run is not what is measured


def imports(repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.time()
        subprocess.run([sys.executable, "-c", "import torch, pytorch_lightning"], check=True)
        times.append(time.time() - start)
    return times


def command_line(tmp: Path, repeats: int = 3, repo: Path = REPO) -> list[float]:
    times = []
    for i in range(repeats):
        marker = tmp / f"first-step-{i}.json"
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(repo),
               "GENLAB_TRUSTED_MODULES": "bench.first_step"}  # the timing callback is built from the config
        start = time.time()
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "genlab-train"), f"paths.log_dir={tmp}",
             "+callbacks.first_step._target_=bench.first_step.StopAtFirstStep",
             f"+callbacks.first_step.path={marker}"],
            env=env, check=True, capture_output=True,
        )
        times.append(json.loads(marker.read_text())["first_step"] - start)
    return times


def phases(tmp: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    t = time.time()
    code = "import genlab.train, genlab.callbacks.fid, pytorch_lightning.loggers"
    subprocess.run([sys.executable, "-c", code], check=True)
    out["python start + imports (fresh process)"] = time.time() - t

    from hydra import compose, initialize_config_dir

    from genlab.config import CONF_DIR, build_sampler, instantiate
    from genlab.entry import build_callbacks, build_trainer

    t = time.time()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp / 'phases'}"])
    out["compose config"] = time.time() - t
    t = time.time()
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    datamodule.setup("fit")
    out["dataset: check + split"] = time.time() - t
    t = time.time()
    model = instantiate(cfg.model, "model")
    model.sampler = build_sampler(cfg.sampler, model)
    out["model + sampler"] = time.time() - t
    t = time.time()
    os.environ["WANDB_MODE"] = "offline"
    trainer, _ = build_trainer(cfg, build_callbacks(cfg, datamodule), tmp / "phases")  # FID check, W&B, Trainer
    out["callbacks (FID classifier cached) + W&B init + Trainer"] = time.time() - t
    marker = tmp / "phases-first-step.json"

    class Stop(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            marker.write_text(json.dumps({"first_step": time.time()}))
            trainer.should_stop = True  # fit ends after this batch

    trainer.callbacks.append(Stop())
    trainer.should_stop = False
    t = time.time()
    trainer.fit(model, datamodule=datamodule)
    out["fit() until the first step (setup hooks, FID extractor load)"] = (
        json.loads(marker.read_text())["first_step"] - t)
    return out


if __name__ == "__main__":
    # --compare DIR: also time the command of another checkout (e.g. `git archive main`), interleaved
    other = Path(sys.argv[sys.argv.index("--compare") + 1]).resolve() if "--compare" in sys.argv else None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Warm the FID classifier cache once (a first run on a new machine trains it: ~5 s).
        command_line(tmp, repeats=1)
        runs, bare, before = [], [], []
        for _ in range(3):  # interleaved, so that the machine's load falls on all alike
            runs += command_line(tmp, repeats=1)
            bare += imports(repeats=1)
            if other is not None:
                before += command_line(tmp, repeats=1, repo=other)
        rows = [("command line -> first training step", runs),
                ('python -c "import torch, pytorch_lightning"', bare)]
        if other is not None:
            rows.append((f"command line -> first training step, {other}", before))
        for name, times in rows:
            print(f"{name}: {min(times):.1f} s (min of {len(times)}: " + ", ".join(f"{t:.1f}" for t in times) + ")")
        print("load average:", " ".join(f"{v:.2f}" for v in os.getloadavg()))
        for name, seconds in phases(tmp).items():
            print(f"  {seconds:6.2f} s  {name}")
