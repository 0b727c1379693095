"""Benchmark (a), timing only: DDIM-50 and DDPM-1000 sampling wall time on one checkpoint,
interleaved (DDIM, DDPM, DDIM) so that a shared machine's load hits both alike.

    python bench/diffusion_sampler_timing.py --ckpt PATH [--n 100]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

from genlab.checkpoint import load_model, read_checkpoint
from genlab.samplers.ddim import DDIMSampler
from genlab.samplers.ddpm import DDPMSampler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    checkpoint = read_checkpoint(args.ckpt)
    model = load_model(checkpoint, OmegaConf.create(checkpoint["genlab"]["config"]).model)
    times: dict[str, list[float]] = {"ddim50": [], "ddpm1000": []}
    for name, sampler in (("ddim50", DDIMSampler(steps=50)), ("ddpm1000", DDPMSampler()), ("ddim50", DDIMSampler(steps=50))):
        torch.manual_seed(0)
        start = time.perf_counter()
        sampler.sample(model, args.n)
        times[name].append(time.perf_counter() - start)
        print(name, times[name][-1], flush=True)
    ddim = sum(times["ddim50"]) / len(times["ddim50"])
    print(json.dumps({"n": args.n, "seconds": times, "speedup": times["ddpm1000"][0] / ddim}, indent=2))


if __name__ == "__main__":
    main()
