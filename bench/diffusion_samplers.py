"""Benchmark (a): DDIM with 50 steps against DDPM ancestral sampling with all T=1000 steps, on
the same checkpoint (its EMA weights): sampling wall time and FID of each (offline classifier
extractor), plus a grid of each. Trains a checkpoint on the embedded digits first unless --ckpt.

    python bench/diffusion_samplers.py [--ckpt PATH] [--epochs 60] [--n 500]

Writes bench/results/diffusion_samplers.json and diffusion_{ddim50,ddpm1000}_samples.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from genlab.callbacks.fid import FIDCallback
from genlab.modalities.image import save_grid
from genlab.checkpoint import load_model, read_checkpoint
from genlab.config import CONF_DIR, instantiate
from genlab.samplers.base import Sampler
from genlab.samplers.ddim import DDIMSampler
from genlab.samplers.ddpm import DDPMSampler
from genlab.samplers.dpm_solver import DPMSolverSampler
from genlab.utils import seeded

RESULTS = Path(__file__).resolve().parent / "results"


class Timed(Sampler):
    """Wraps a sampler and adds up the seconds spent in ``sample``."""

    def __init__(self, sampler) -> None:
        self.sampler, self.seconds = sampler, 0.0

    def sample(self, model, n, labels=None):
        start = time.perf_counter()
        images = self.sampler.sample(model, n, labels)
        self.seconds += time.perf_counter() - start
        return images


def train_checkpoint(epochs: int, out: Path) -> Path:
    from hydra import compose, initialize_config_dir

    from genlab.train import train

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=ddpm_digits", f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={epochs}",
            "callbacks.fid=null", "callbacks.bpd=null", "callbacks.samples=null", "objective=val/loss", "test=false",
            "logger=none", "trainer.enable_progress_bar=false", f"paths.output_dir={out}"])
    start = time.perf_counter()
    train(cfg)
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.0f} s")
    return out / "checkpoints" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--samplers", default="ddim50,ddpm1000", help="of dpm_solver10,15,20, ddim50, ddpm1000")
    parser.add_argument("--split", default="train", help="FID reference split (digits: train has 1437 images)")
    args = parser.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))

    work = Path(tempfile.mkdtemp())
    ckpt_path = args.ckpt or train_checkpoint(args.epochs, work / "run")
    checkpoint = read_checkpoint(ckpt_path)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(checkpoint["genlab"]["config"])
    model = load_model(checkpoint, cfg.model)  # the EMA weights, as genlab-eval/-sample use
    datamodule = instantiate(cfg.dataset, "dataset")
    fid = FIDCallback(extractor="classifier", num_samples=args.n, chunk_size=250, cache_dir=str(work / "cache"))

    results = {"checkpoint": str(ckpt_path), "timesteps": model.timesteps, "n_samples": args.n,
               "fid_reference": f"{args.split} split of {cfg.dataset.name}", "extractor": "classifier"}
    samplers = {"dpm_solver10": DPMSolverSampler(steps=10), "dpm_solver15": DPMSolverSampler(steps=15),
                "dpm_solver20": DPMSolverSampler(steps=20), "ddim50": DDIMSampler(steps=50, eta=0.0),
                "ddpm1000": DDPMSampler(variance="beta")}
    for name in args.samplers.split(","):
        sampler = samplers[name]
        timed = Timed(sampler)
        value = next(iter(fid.compute(model, timed, datamodule, args.split).values()))
        results[name] = {"fid_classifier": value, "sampling_s": timed.seconds}
        with seeded(0):
            save_grid(sampler.sample(model, 64), RESULTS / f"diffusion_{name}_samples.png")
        print(name, results[name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = "" if args.samplers == "ddim50,ddpm1000" else "_" + args.samplers.replace(",", "_")
    (RESULTS / f"diffusion_samplers{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
