"""Digits Glow: images per CPU-second per GFLOP, genlab against normflows' Glow in one process.

    pip install --no-deps --target /tmp/nf normflows==1.7.3     # a scratch folder, not the venv
    PYTHONPATH=/tmp/nf OMP_NUM_THREADS=1 .venv/bin/python bench/flows_per_flop.py [--before REV]

Everything runs in one process, ``genlab-train experiment=flow_glow_digits hardware.cpu_threads=1``
with a callback (``Interleave``) added: it times blocks of the Trainer's own training steps
(data, forward, backward, gradient clipping, Adam, EMA, logging: what a user's run pays), and
after each block one block of each plain-loop model below, round-robin, so that the machine's
load falls on all of them alike. The plain-loop models, each of the same architecture on the
8x8 digits: genlab's ``experiment=flow_glow_digits`` (2 levels x 4 steps of actnorm,
LU 1x1 conv, affine coupling of width 64, logit preprocessing) from this tree, the same config
built from genlab's code at ``--before`` (default: main), and normflows' ``MultiscaleFlow`` of
``GlowBlock``s with the same levels, steps, width, logit transform and a ``GlowBase`` per level
(normflows has no learned split prior; FLOPs are counted per model, so that difference is
normalised out).

For each: a training step (log-likelihood of 64 dequantized digits, backward, Adam) and an
evaluation pass (log-likelihood of 256 digits, no gradients, eval mode). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one such step (forward + backward for
training); time is the process's CPU time (``time.process_time``). Reported: images per
CPU-second (median over rounds), GFLOP per image, and their product, images per CPU-second per
GFLOP of work per image (the share of the CPU's arithmetic each gets: higher is better).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import compose_cfg  # noqa: E402

from genlab.config import instantiate  # noqa: E402


def module_from_rev(rev: str, path: str, name: str, replace: dict[str, object]):
    """The module ``path`` as it is at git revision ``rev``, imported under ``name``; while it
    executes, ``replace`` stands in sys.modules (so its ``from genlab.x import`` finds the old x)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    saved = {k: sys.modules.get(k) for k in replace}
    sys.modules.update(replace)
    sys.modules[name] = module
    try:
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    finally:
        for k, v in saved.items():
            sys.modules[k] = v
    return module


def glow_cfg():
    """The composed config of ``experiment=flow_glow_digits`` (inside a Hydra app: its compose)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    overrides = ["experiment=flow_glow_digits", "logger=none"]
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides)
    return compose_cfg(overrides=overrides)


def genlab_glow(rev: str | None):
    cfg = glow_cfg()
    if rev is None:
        return instantiate(cfg.model, "model")
    nets = module_from_rev(rev, "genlab/nets/flows.py", "genlab_before_nets_flows", {})
    flow = module_from_rev(rev, "genlab/models/flow.py", "genlab_before_models_flow",
                           {"genlab.nets.flows": nets})
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(cfg.model, _target_=f"{flow.__name__}.Flow")


def normflows_glow(levels: int = 2, steps: int = 4, hidden: int = 64, shape=(1, 8, 8)):
    """normflows' Glow as in its example notebook (examples/glow.ipynb), unconditional."""
    import normflows as nf

    c, h, _ = shape
    q0, merges, flows = [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                      for _ in range(steps)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), h // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, h // 2 ** levels)
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha=0.05), class_cond=False)


class Runner:
    """One model's training step and evaluation pass on 8-bit digits (bits/dim loss for both)."""

    def __init__(self, name: str, model: torch.nn.Module, is_genlab: bool, init_batch: torch.Tensor) -> None:
        self.name, self.model, self.is_genlab = name, model, is_genlab
        self.dims = init_batch[0].numel()
        model.train()
        with torch.no_grad():  # actnorm's data-dependent initialisation, outside the timing
            self.nll(init_batch)
        self.opt = torch.optim.Adam(model.parameters(), 1e-3)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Bits per dimension of each image (one uniform dequantization)."""
        if self.is_genlab:
            return self.model._nll_bits_once(x) / self.dims
        u = (x.float() + torch.rand(x.shape)) / 256
        return -(self.model.log_prob(u, None) - self.dims * math.log(256)) / math.log(2) / self.dims

    def train_step(self, x: torch.Tensor) -> float:
        self.model.train()
        loss = self.nll(x).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def eval_pass(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.nll(x)

    def flops(self, x_train: torch.Tensor, x_eval: torch.Tensor) -> tuple[int, int]:
        self.model.train()
        with FlopCounterMode(display=False) as counter:
            self.nll(x_train).mean().backward()
        self.opt.zero_grad(set_to_none=True)
        train = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            self.eval_pass(x_eval)
        return train, counter.get_total_flops()


class Interleave(pl.Callback):
    """Runs inside ``genlab-train experiment=flow_glow_digits``: times the Trainer's own training
    steps (the interval from one ``on_train_batch_start`` to the next, within an epoch: data,
    forward, backward, gradient clipping, Adam, EMA, logging, every callback) and, after each
    block of them, one block of every plain-loop runner, round-robin, in the same process."""

    def __init__(self, out: str, before: str = "main", rounds: int = 7, steps: int = 20, evals: int = 5) -> None:
        self.out, self.before, self.rounds, self.steps, self.evals = out, before, rounds, steps, evals
        self.trainer_cpu: list[float] = []
        self._block, self._last, self._epoch = 0.0, None, -1
        self._counted = 0

    def on_train_start(self, trainer, pl_module) -> None:
        torch.manual_seed(0)
        data = trainer.datamodule
        train = torch.stack([x for x, _ in data.split_dataset("train")])
        val = torch.stack([x for x, _ in data.split_dataset("val")])
        g = torch.Generator().manual_seed(0)
        self.batches = [train[torch.randint(0, len(train), (64,), generator=g)] for _ in range(self.steps)]
        self.x_eval = torch.cat([val, train])[:256]
        self.runners = [Runner("genlab, plain loop", genlab_glow(None), True, self.batches[0])]
        if self.before:
            self.runners.append(Runner(f"genlab@{self.before}, plain loop", genlab_glow(self.before), True,
                                       self.batches[0]))
        self.runners.append(Runner("normflows, plain loop", normflows_glow(), False, self.batches[0]))
        self.flops = {r.name: r.flops(self.batches[0], self.x_eval) for r in self.runners}
        self.params = {r.name: sum(p.numel() for p in r.model.parameters()) for r in self.runners}
        self.cpu = {r.name: {"train": [], "eval": []} for r in self.runners}
        for r in self.runners:  # warm-up (allocator, oneDNN primitive caches)
            for x in self.batches[:3]:
                r.train_step(x)
            r.eval_pass(self.x_eval)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.process_time()
        if trainer.global_step < 10:  # the Trainer's own warm-up
            self._last, self._epoch = None, trainer.current_epoch
            return
        if self._last is not None and trainer.current_epoch == self._epoch:
            self._block += now - self._last  # one whole step of the Trainer's, not crossing an epoch end
            self._counted += 1
        self._epoch = trainer.current_epoch
        if self._counted == self.steps:
            self.trainer_cpu.append(self._block)
            self._block, self._counted = 0.0, 0
            self._plain_block()
            if len(self.trainer_cpu) == self.rounds:
                self._write(pl_module)
                os._exit(0)  # what is measured is done: no validation, test or FID afterwards
        self._last = time.process_time()

    def _plain_block(self) -> None:
        for r in self.runners:
            t = time.process_time()
            for x in self.batches:
                r.train_step(x)
            self.cpu[r.name]["train"].append(time.process_time() - t)
            t = time.process_time()
            for _ in range(self.evals):
                r.eval_pass(self.x_eval)
            self.cpu[r.name]["eval"].append(time.process_time() - t)

    def _write(self, pl_module) -> None:
        rows = [{"model": "genlab, genlab-train (Trainer, EMA, clipping)",
                 "params": sum(p.numel() for p in pl_module.parameters()),
                 "train_img_per_cpu_s": 64 * self.steps / st.median(self.trainer_cpu),
                 "train_gflop_per_img": self.flops[self.runners[0].name][0] / 64 / 1e9,
                 "train_cpu_s_blocks": self.trainer_cpu}]
        for r in self.runners:
            rows.append({"model": r.name, "params": self.params[r.name],
                         "train_img_per_cpu_s": 64 * self.steps / st.median(self.cpu[r.name]["train"]),
                         "train_gflop_per_img": self.flops[r.name][0] / 64 / 1e9,
                         "eval_img_per_cpu_s": len(self.x_eval) * self.evals / st.median(self.cpu[r.name]["eval"]),
                         "eval_gflop_per_img": self.flops[r.name][1] / len(self.x_eval) / 1e9,
                         "train_cpu_s_blocks": self.cpu[r.name]["train"]})
        Path(self.out).write_text(json.dumps({
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": self.rounds,
            "steps_per_block": self.steps, "evals_per_block": self.evals, "eval_batch": len(self.x_eval),
            "loadavg": os.getloadavg(), "rows": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision of genlab to compare with ('' to skip)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--evals", type=int, default=5, help="evaluation passes per block")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "flows_per_flop.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GENLAB_TRUSTED_MODULES": "bench.flows_per_flop",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cb = "+callbacks.interleave."
        subprocess.run([sys.executable, "-m", "genlab.train", "experiment=flow_glow_digits", "logger=none",
                        "hardware.cpu_threads=1", f"paths.log_dir={tmp}", "trainer.max_epochs=10000",
                        f"{cb}_target_=bench.flows_per_flop.Interleave", f"{cb}out={args.out}",
                        f"{cb}before='{args.before}'", f"{cb}rounds={args.rounds}", f"{cb}steps={args.steps}",
                        f"{cb}evals={args.evals}"], env=env, check=True)
    result = json.loads(Path(args.out).read_text())
    print(f"torch {result['torch']}, {result['threads']} thread, {result['rounds']} rounds alternating in one "
          f"process; train: blocks of {result['steps_per_block']} steps of 64; eval: {result['evals_per_block']} "
          f"passes of {result['eval_batch']}; load average {result['loadavg']}")
    print(f"{'':45s} {'train: img/CPU-s':>16s} {'GFLOP/img':>9s} {'x':>6s} | {'eval: img/CPU-s':>15s} "
          f"{'GFLOP/img':>9s} {'x':>6s}")
    for row in result["rows"]:
        line = (f"{row['model']:45s} {row['train_img_per_cpu_s']:16.0f} {row['train_gflop_per_img']:9.5f} "
                f"{row['train_img_per_cpu_s'] * row['train_gflop_per_img']:6.2f}")
        if "eval_img_per_cpu_s" in row:
            line += (f" | {row['eval_img_per_cpu_s']:15.0f} {row['eval_gflop_per_img']:9.5f} "
                     f"{row['eval_img_per_cpu_s'] * row['eval_gflop_per_img']:6.2f}")
        print(line)


if __name__ == "__main__":
    main()
