"""Spread of the diffusion bits/dim estimate on digits, before (100 plain strata) and after
(the first 10 terms exact, 90 strata over the rest), on a trained ddpm_digits checkpoint.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/diffusion_bpd_std.py CKPT [images] [repeats]

For each of the first `images` validation digits, `repeats` independent estimates with each
estimator (k = 100 network calls per estimate, T = 1000), and the full sum over all 1000 terms
(one draw of x_t per term) for reference.
"""
import statistics
import sys
import time

import torch
from omegaconf import OmegaConf

from genlab.data import DigitsDataModule
from genlab.models.diffusion import DDPM

ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
cfg = OmegaConf.create(ckpt["genlab"]["config"])
kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
          if k not in ("_target_", "optimizer", "scheduler")}
model = DDPM(**kwargs).eval()
model.load_state_dict(ckpt["state_dict"])  # the EMA weights
n_images = int(sys.argv[2]) if len(sys.argv) > 2 else 8
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 32
dm = DigitsDataModule(seed=int(cfg.seed))
dm.setup("fit")
val = dm.split_dataset("val")
x = torch.stack([val[i][0] for i in range(n_images)])
xr = x.repeat_interleave(repeats, 0)
D = model.num_dims
rows = {}
torch.manual_seed(0)
for name, exact in (("before: 100 strata", 0), ("after: 10 exact + 90 strata", 10)):
    model.bound_exact_terms = exact
    start = time.perf_counter()
    est = (model.nll_bits(xr, k=100) / D).view(n_images, repeats)
    rows[name] = (est.mean(1), est.std(1), time.perf_counter() - start)
start = time.perf_counter()
full = (model.nll_bits(x.repeat_interleave(4, 0), k=1000) / D).view(n_images, 4)
full_time = time.perf_counter() - start
print(f"{n_images} val digits, {repeats} estimates each, k=100 network calls per estimate, T=1000")
print(f"full sum (1000 terms, 4 draws): mean {full.mean():.4f} bits/dim, spread of one draw {full.std(1).mean():.4f}")
for name, (mean, std, secs) in rows.items():
    print(f"{name}: mean {mean.mean():.4f} bits/dim, std of one image's estimate {std.mean():.3f} "
          f"(median over images {statistics.median(std.tolist()):.3f}), "
          f"std of a 180-image val/bpd {std.pow(2).mean().sqrt() / 180 ** 0.5:.4f}; {secs:.1f} s")
