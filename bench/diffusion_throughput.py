"""Benchmark (b): training throughput (images/s) of the CIFAR-10-sized DDPM (35.7M-parameter
UNet, experiment=ddpm_cifar10) through genlab's Trainer against a plain PyTorch loop around the
same network, optimizer (Adam 2e-4), warm-up schedule and gradient clipping.

Both read the same in-memory batches of CIFAR-shaped uint8 images through the same DataLoader.
Repetitions alternate (plain, genlab, plain, genlab, ...) so that load on a shared machine hits
both alike; each repetition times ``--steps`` steps after ``--warmup`` untimed ones.

    python bench/diffusion_throughput.py [--batch 8] [--steps 4] [--warmup 2] [--reps 3] [--device cpu]

Writes bench/results/diffusion_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

from genlab.config import CONF_DIR, instantiate
from genlab.entry import build_trainer
from genlab.nets.likelihoods import to_unit_range

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimer(pl.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.end = time.perf_counter()

    @staticmethod
    def _sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def genlab_run(cfg, loader, warmup: int, steps: int, out: Path) -> float:
    model = instantiate(cfg.model, "model")
    timer = StepTimer(warmup)
    trainer, _ = build_trainer(cfg, [timer], out)
    trainer.fit(model, train_dataloaders=loader)
    return steps * loader.batch_size / (timer.end - timer.start)


def plain_run(cfg, loader, warmup: int, steps: int, device: torch.device, bf16: bool) -> float:
    model = instantiate(cfg.model, "model").to(device)  # for its network and schedule only
    net = model.net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.model.optimizer.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, instantiate(cfg.model.scheduler.lr_lambda, "lr_lambda"))
    sqrt_ab = model.alphas_bar.sqrt().float().to(device)
    sqrt_1m_ab = (1 - model.alphas_bar).sqrt().float().to(device)
    start = None
    for step, (x, _) in enumerate(loader):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x0 = to_unit_range(x.to(device))
        t = torch.randint(0, model.timesteps, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        xt = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_ab[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(net(xt, t).float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        if step + 1 == warmup + steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    gpu = args.device == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    work = Path(tempfile.mkdtemp())
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=ddpm_cifar10", f"hardware={'gpu' if gpu else 'cpu'}", "logger=none",
            f"trainer.max_steps={args.warmup + args.steps}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "+trainer.enable_checkpointing=false", "trainer.limit_val_batches=0", f"paths.output_dir={work}"])
    bf16 = "bf16" in str(cfg.trainer.get("precision"))
    n = args.batch * (args.warmup + args.steps)
    data = TensorDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.full((n,), -1))
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)

    plain, genlab = [], []
    for rep in range(args.reps):
        torch.manual_seed(rep)
        plain.append(plain_run(cfg, loader, args.warmup, args.steps, device, bf16))
        torch.manual_seed(rep)
        genlab.append(genlab_run(cfg, loader, args.warmup, args.steps, work / f"rep{rep}"))
        print(f"rep {rep}: plain {plain[-1]:.2f} img/s, genlab {genlab[-1]:.2f} img/s", flush=True)
    p, g = statistics.median(plain), statistics.median(genlab)
    results = {
        "device": str(device), "precision": str(cfg.trainer.get("precision")), "batch": args.batch,
        "timed_steps_per_rep": args.steps, "warmup_steps": args.warmup, "threads": torch.get_num_threads(),
        "params": sum(q.numel() for q in instantiate(cfg.model, "model").net.parameters()),
        "plain_img_s": plain, "genlab_img_s": genlab, "plain_median": p, "genlab_median": g,
        "overhead_pct": 100 * (p / g - 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"diffusion_throughput_{args.device}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
