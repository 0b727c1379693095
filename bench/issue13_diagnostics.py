"""Issue 13 diagnostics: plain training loops over the shipped experiments' models (no Lightning,
no EMA), to find why NICE, the MNIST VAE and the MNIST Transformer fail. Run from the repo root:

    OMP_NUM_THREADS=1 python bench/issue13_diagnostics.py nice STEPS [overrides...]
    OMP_NUM_THREADS=1 python bench/issue13_diagnostics.py vae STEPS MNIST_ROOT [overrides...]
    OMP_NUM_THREADS=1 python bench/issue13_diagnostics.py ar STEPS MNIST_ROOT [overrides...]

MNIST_ROOT holds MNIST/raw/*.gz (the 10,000 test images; pool=test). Results: bench/nice.md,
bench/vae.md, bench/autoregressive.md.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import compose_cfg  # noqa: E402

from genlab.config import instantiate  # noqa: E402
from genlab.samplers.autoregressive import AutoregressiveSampler  # noqa: E402
from genlab.utils import seeded  # noqa: E402

EXPERIMENTS = {"nice": "flow_nice_digits", "vae": "vae_mnist", "ar": "autoregressive_transformer_mnist"}


def setup(kind: str, root: str | None, extra: list[str]):
    data = [f"dataset.root={root}", "dataset.pool=test", "dataset.download=false"] if root else []
    cfg = compose_cfg(overrides=[f"experiment={EXPERIMENTS[kind]}", "logger=none", *data, *extra])
    torch.manual_seed(0)
    dm = instantiate(cfg.dataset, "dataset")
    dm.setup()
    split = lambda name: torch.stack([x for x, _ in dm.split_dataset(name)])  # noqa: E731
    model = instantiate(cfg.model, "model")
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    return cfg, model, opt[0] if isinstance(opt, (list, tuple)) else opt, split("train"), split("test")


def train(model, opt, xtr, steps: int, batch: int, loss_fn, log_fn=None, clip: float | None = None) -> None:
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        model.train()
        loss = loss_fn(xtr[torch.randint(0, len(xtr), (batch,), generator=g)])
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % max(1, steps // 6) == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
            if log_fn:
                log_fn()
    model.eval()


def nice(steps: int, extra: list[str]) -> None:
    cfg, model, opt, xtr, xte = setup("nice", None, extra)
    train(model, opt, xtr, steps, cfg.dataset.batch_size,
          lambda x: model._nll_bits_once(x).mean() / model.num_dims, clip=cfg.trainer.gradient_clip_val)
    with torch.no_grad(), seeded(1):
        per = model.nll_bits(xte) / model.num_dims
    print(f"{extra} steps={steps}: test bits/dim {per.mean():.3f} (median {per.median():.3f})")


def vae(steps: int, root: str, extra: list[str]) -> None:
    cfg, model, opt, xtr, xte = setup("vae", root, extra)
    to_bpd = 1 / (model.num_dims * math.log(2))
    probe = xtr[:32]

    def loss_fn(x):
        recon, kl = model._neg_elbo_terms(x, None)
        return (recon + model.beta * kl).mean() * to_bpd

    def log_fn():  # is the decoder's mean saturated, and does its output still depend on z?
        with torch.no_grad():
            mean, _ = model.encode(probe)
            a, b = model.decode(mean).mean, model.decode(mean.roll(1, 0)).mean
            _, kl = model._neg_elbo_terms(probe, None)
        print(f"  |decoder mean| > 0.999: {(a.abs() > 0.999).float().mean():.2f}; output change when z "
              f"changes: {(a - b).abs().mean():.4f}; KL {kl.mean():.2f} nats")

    train(model, opt, xtr, steps, cfg.dataset.batch_size, loss_fn, log_fn)
    with torch.no_grad(), seeded(1):
        recon, kl = model._neg_elbo_terms(xte[:500], None)
        images = model.decode(model.prior_latents(64)).mean_image()
    print(f"{extra} steps={steps}: test ELBO {((recon + kl).mean() * to_bpd):.3f} bits/dim, KL {kl.mean():.2f} nats;"
          f" decoder-mean samples max pixel {int(images.max())}")


def ar(steps: int, root: str, extra: list[str]) -> None:
    cfg, model, opt, xtr, xte = setup("ar", root, extra)
    train(model, opt, xtr, steps, cfg.dataset.batch_size, lambda x: model.nll_bits(x).mean() / model.num_dims)
    xte = xte[:128]

    class Recording(AutoregressiveSampler):
        seen: list = []

        def draw(self, logits):
            self.seen.append(logits.clone())
            return super().draw(logits)

    sampler = Recording()
    c, h, w = model.data_shape
    with torch.no_grad():
        bpd = (model.nll_bits(xte) / model.num_dims).mean()
        with seeded(0):
            x = sampler.sample(model, 16)
        full = model.logits(x).view(16, c, 256, h, w).permute(0, 3, 4, 1, 2).reshape(16, h * w * c, 256)
        p_ink = torch.softmax(model.logits(xte).view(len(xte), c, 256, h, w)[:, 0], 1)[:, 128:].sum(1)
    print(f"{extra} steps={steps}: exact test bits/dim {bpd:.3f}; sampler vs teacher-forced logits: "
          f"max |diff| {(torch.stack(sampler.seen, 1) - full).abs().max():.2e}")

    def continuity(images):
        ink = (images[:, 0] > 127).float()
        above = (ink[:, 1:] * ink[:, :-1]).sum() / ink[:, 1:].sum()
        left = (ink[:, :, 1:] * ink[:, :, :-1]).sum() / ink[:, :, 1:].sum()
        return f"P(ink above | ink) {above:.3f}, P(ink left | ink) {left:.3f}"

    print(f"data: {continuity(xte)}; samples: {continuity(x)}")
    ink = xte[:, 0] > 127
    above, left = torch.zeros_like(ink), torch.zeros_like(ink)
    above[:, 1:], left[:, :, 1:] = ink[:, :-1], ink[:, :, :-1]
    for name, sel in {"ink above, dark left": above & ~left, "ink left, dark above": left & ~above,
                      "ink above and left": above & left, "dark above and left": ~above & ~left}.items():
        print(f"teacher-forced, {name}: {int(sel.sum())} pixels, data P(ink) {ink[sel].float().mean():.3f}, "
              f"model P(ink) {p_ink[sel].mean():.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    kind, steps = sys.argv[1], int(sys.argv[2])
    if kind == "nice":
        nice(steps, sys.argv[3:])
    else:
        {"vae": vae, "ar": ar}[kind](steps, sys.argv[3], sys.argv[4:])
