"""Bits per dimension on the validation and test splits, for every family with a likelihood."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from genlab.checks import require_positive
from genlab.metrics.distributed import map_chunks

log = logging.getLogger(__name__)


class BitsPerDim(pl.Callback):
    """Logs ``val/bpd`` and ``test/bpd``: the mean over examples of ``nll_bits(x) / (C*H*W)``.

    The split is cut into chunks seeded by their index and spread over the ranks, so one and
    two processes compute the same number. A family without a likelihood gets a single
    "not applicable" message and no logged value.
    """

    def __init__(self, max_examples: int | None = None, chunk_size: int = 100, seed: int = 4321) -> None:
        require_positive("callbacks.bpd", chunk_size=chunk_size)
        if max_examples is not None:  # null = the whole split
            require_positive("callbacks.bpd", max_examples=max_examples)
        self.max_examples = max_examples
        self.chunk_size = chunk_size
        self.seed = seed
        self._said = False

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if pl_module.likelihood is None:
            if not self._said:
                log.info("bits/dim: not applicable (the %s family has no likelihood)", pl_module.family)
                self._said = True
            return
        dataset = trainer.datamodule.split_dataset(split)
        n = len(dataset) if self.max_examples is None else min(len(dataset), self.max_examples)
        conditional = getattr(pl_module, "conditional", False)

        def bits(start: int, stop: int) -> torch.Tensor:
            xs, ys = zip(*(dataset[i] for i in range(start, stop)))
            x = torch.stack(xs).to(pl_module.device)
            y = torch.as_tensor(ys, device=pl_module.device) if conditional else None
            return pl_module.nll_bits(x, y).double()

        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            total = map_chunks(n, self.chunk_size, self.seed, bits)
        pl_module.train(was_training)
        bpd = (total.sum() / (n * pl_module.num_dims)).item()
        pl_module.log(f"{split}/bpd", bpd, prog_bar=True, sync_dist=False, rank_zero_only=False)
        if not self._said:
            kind = "exact" if pl_module.likelihood == "exact" else "an upper bound"
            log.info("bits/dim (%s) is %s, over %d %s examples", pl_module.family, kind, n, split)
            self._said = True

    def metric_names(self, model: pl.LightningModule) -> list[str]:
        return ["val/bpd"] if model.likelihood is not None else []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._measure(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(trainer, pl_module, "test")
