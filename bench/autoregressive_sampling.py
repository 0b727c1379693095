"""Benchmark: time to sample 64 MNIST-sized images (1x28x28) from each autoregressive model, with
the sampler's cache (key/value cache for the Transformer, the reach window for the conv nets)
and without (the whole image recomputed for every sub-pixel). Model sizes are those of the MNIST
experiment configs; weights are random (the time does not depend on them). One thread.

Without the cache every step is the same full forward pass, so by default the uncached time is
measured over one row of steps (28) and multiplied by the 28 rows; --full times it end to end.

    python bench/autoregressive_sampling.py [--full] [--n 64] [--json bench/results/autoregressive_sampling.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from genlab.config import CONF_DIR
from genlab.samplers.autoregressive import AutoregressiveSampler
from genlab.utils import seeded

EXPERIMENTS = {
    "pixelcnn": "autoregressive_pixelcnn_mnist",
    "gated_pixelcnn": "autoregressive_mnist",
    "ar_transformer": "autoregressive_transformer_mnist",
}


def build(experiment: str) -> torch.nn.Module:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    return instantiate(cfg.model).eval()


def uncached_one_row(model: torch.nn.Module, n: int, sampler: AutoregressiveSampler) -> float:
    """Seconds for one row (W steps) of the uncached path: a full forward and a draw per step."""
    c, h, w = model.data_shape
    x = torch.zeros(n, c, h, w, dtype=torch.uint8)
    start = time.perf_counter()
    with torch.no_grad():
        for j in range(w):
            logits = model.logits(x).view(n, c, 256, h, w)
            x[:, 0, 0, j] = sampler.draw(logits[:, 0, :, 0, j])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--full", action="store_true", help="time the uncached path end to end")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, experiment in EXPERIMENTS.items():
        model = build(experiment)
        params = sum(p.numel() for p in model.parameters())
        with seeded(0):
            start = time.perf_counter()
            cached = AutoregressiveSampler(cache=True).sample(model, args.n)
            t_cached = time.perf_counter() - start
        if args.full:
            with seeded(0):
                start = time.perf_counter()
                uncached = AutoregressiveSampler(cache=False).sample(model, args.n)
                t_uncached = time.perf_counter() - start
            same = bool(torch.equal(cached, uncached))
        else:
            t_uncached = uncached_one_row(model, args.n, AutoregressiveSampler()) * model.data_shape[1]
            same = None
        results[name] = {"params": params, "cached_s": round(t_cached, 2), "uncached_s": round(t_uncached, 2),
                         "speedup": round(t_uncached / t_cached, 1), "uncached_measured": "full" if args.full else "one row x 28",
                         "same_samples": same}
        print(name, results[name], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "shape": [1, 28, 28], "threads": 1, **results}, f, indent=2)


if __name__ == "__main__":
    main()
