"""Benchmark: time for WaveNet to sample one second of 8 kHz audio (8,000 samples), with the
sampler's cache (a queue of past inputs per layer: one step per layer per sample) and without.

The model is the one of ``experiment=wavenet_fsdd`` (or ``--experiment``), its clip length set
to 8,000; weights are random (the time does not depend on them). One thread.

Two uncached references, both drawing from exactly the same conditionals:
- ``uncached``: the sampler's ``cache: false`` path, a full forward pass over the whole clip for
  every sample (what "forward 8,000 times for one second" costs);
- ``window``: a forward pass over only the receptive field before each sample (the cheapest
  recomputation that is still exact).
Every step of either is the same size of pass, so by default each is timed over ``--steps`` steps
and multiplied up to 8,000; ``--full`` times the sampler's uncached path end to end (slow on a CPU).

    python -m bench.wavenet_sampling [--n 10] [--steps 100] [--full] [--json bench/results/wavenet_sampling.json]
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

LENGTH = 8000


def build(experiment: str) -> torch.nn.Module:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"model.data_shape=[1,{LENGTH}]"])
    return instantiate(cfg.model).eval()


def per_step(model: torch.nn.Module, n: int, steps: int, window: bool, sampler: AutoregressiveSampler,
             labels: torch.Tensor | None) -> float:
    """Seconds per sample of a recomputing path: a forward pass (whole clip, or the receptive
    field before the sample) and a draw, timed over ``steps`` samples late in the clip."""
    x = torch.zeros(n, 1, LENGTH, dtype=torch.uint8)
    start_t = LENGTH - steps
    begin = time.perf_counter()
    with torch.no_grad():
        for t in range(start_t, LENGTH):
            left = max(0, t - model.receptive_field) if window else 0
            stop = t + 1 if window else LENGTH
            logits = model.logits(x[:, :, left:stop], labels)
            x[:, 0, t] = sampler.draw(logits[:, :, t - left]).to(x.dtype)
    return (time.perf_counter() - begin) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="wavenet_fsdd")
    parser.add_argument("--n", type=int, default=10, help="clips sampled at once (one per digit)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--full", action="store_true", help="time the uncached sampler end to end")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build(args.experiment)
    sampler = AutoregressiveSampler(cache=True)
    labels = sampler.labels_for(model, args.n)

    begin = time.perf_counter()
    with seeded(0):
        cached = sampler.sample(model, args.n, labels)
    cached_s = time.perf_counter() - begin

    if args.full:
        begin = time.perf_counter()
        with seeded(0):
            uncached = AutoregressiveSampler(cache=False).sample(model, args.n, labels)
        uncached_s = time.perf_counter() - begin
        assert torch.equal(cached, uncached), "the cached and uncached samples differ"
    else:
        uncached_s = per_step(model, args.n, args.steps, False, sampler, labels) * LENGTH
    window_s = per_step(model, args.n, args.steps, True, sampler, labels) * LENGTH

    result = {
        "experiment": args.experiment, "n": args.n, "samples": LENGTH, "receptive_field": model.receptive_field,
        "parameters": sum(p.numel() for p in model.parameters()),
        "cached_s": round(cached_s, 2), "uncached_s": round(uncached_s, 1), "window_s": round(window_s, 1),
        "uncached_measured": "end to end" if args.full else f"{args.steps} steps x {LENGTH // args.steps}",
        "speedup_vs_uncached": round(uncached_s / cached_s, 1), "speedup_vs_window": round(window_s / cached_s, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
