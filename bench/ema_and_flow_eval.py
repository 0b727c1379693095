"""EMA cost per training step and a flow's validation cost per epoch, before and after issue 17.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/ema_and_flow_eval.py

EMA: the digits Glow (experiment=flow_glow_digits), 300 updates of its average with the old
per-tensor function and with the fused one, interleaved in blocks, median per update, beside
the median of one training step (forward, backward, Adam) of the same model at batch 64.
Validation: the digits val split through the old path (the model's own validation pass, then
the bits/dim callback's pass) against the new one (the callback's pass alone).
"""
import statistics as st
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel

from genlab.callbacks.bpd import BitsPerDim
from genlab.callbacks.ema import EMA
from genlab.config import CONF_DIR, register_resolvers

register_resolvers()
with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=flow_glow_digits"])
dm = instantiate(cfg.dataset)
dm.setup("fit")
model = instantiate(cfg.model)
x = torch.stack([dm.split_dataset("train")[i][0] for i in range(64)])
with torch.no_grad():
    model.log_prob(model.dequantize(x))  # actnorm data init
print("parameter + buffer tensors:", len([*model.parameters(), *model.buffers()]))


def old_fn(averaged, current, num_averaged):
    n = float(num_averaged)
    d = min(0.999, (1.0 + n) / (10.0 + n))
    return d * averaged + (1.0 - d) * current


old = AveragedModel(model, use_buffers=True, avg_fn=old_fn)
new = AveragedModel(model, use_buffers=True, **EMA(decay=0.999)._kwargs)
times = {"old": [], "new": []}
for block in range(6):
    for name, avg in (("old", old), ("new", new)):
        for _ in range(50):
            t = time.perf_counter()
            avg.update_parameters(model)
            times[name].append(time.perf_counter() - t)
opt = torch.optim.Adam(model.parameters(), 1e-4)
steps = []
for _ in range(15):
    t = time.perf_counter()
    loss = model._nll_bits_once(x).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    steps.append(time.perf_counter() - t)
step = st.median(steps[3:])
for name in ("old", "new"):
    m = st.median(times[name])
    print(f"EMA update {name}: {m * 1e3:.2f} ms ({100 * m / step:.1f}% of a {step * 1e3:.0f} ms training step)")

val = dm.split_dataset("val")
batches = [torch.stack([val[i][0] for i in range(j, min(j + 256, len(val)))]) for j in range(0, len(val), 256)]
model.eval()
callback = BitsPerDim()
res = {"old": [], "new": []}
for _ in range(3):
    t = time.perf_counter()
    with torch.no_grad():
        for b in batches:  # the model's own validation pass (what the flow's validation_step did)
            model._nll_bits_once(b).mean()
    callback.measure(model, val)
    res["old"].append(time.perf_counter() - t)
    t = time.perf_counter()
    callback.measure(model, val)
    res["new"].append(time.perf_counter() - t)
for name in ("old", "new"):
    print(f"validation {name}: {st.median(res[name]):.2f} s for {len(val)} images")
