"""Bits per dimension on the validation and test splits, for every family with a likelihood."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.checks import require_positive
from genlab.metrics.distributed import map_chunks

log = logging.getLogger(__name__)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error, std / sqrt(n) (0 for one value).

    Each example's value carries its own Monte Carlo draw (dequantization, latent, timestep), so
    this covers both the spread over the data and the estimator's own noise."""
    values = values.double()
    n = values.numel()
    stderr = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else 0.0
    return values.mean().item(), stderr


class BitsPerDim(pl.Callback):
    """Logs ``val/bpd`` and ``test/bpd``: the mean over examples of ``nll_bits(x) / num_dims``,
    with its standard error beside it (``val/bpd_stderr``).

    A conditional model's ``val/bpd`` is the marginal -log2 p(x) = -log2 sum_y p(y) p(x|y) (exact
    over the classes: ``model.marginal_nll_bits``), comparable with unconditional models; its
    -log2 p(x|y) on the true labels is ``val/bpd_conditional``. The split is cut into chunks
    seeded by their index and spread over the ranks, so one and two processes compute the same
    number. ``max_examples`` caps the cost (the first examples of the split; Lightning's
    ``trainer.limit_val_batches`` does not apply to it). A family without a likelihood gets a
    single "not applicable" message and no logged value. For a family whose validation loss is
    its bits/dim (``model.loss_is_bpd``), the model skips its own validation pass and this
    callback logs ``val/loss`` too, from the same numbers.
    """

    def __init__(self, max_examples: Optional[int] = None, chunk_size: int = 100, seed: int = 4321) -> None:
        require_positive("callbacks.bpd", chunk_size=chunk_size)
        if max_examples is not None:  # null = the whole split
            require_positive("callbacks.bpd", max_examples=max_examples)
        self.max_examples = max_examples
        self.chunk_size = chunk_size
        self.seed = seed
        self._said = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "loss_is_bpd", False):
            pl_module.eval_loss_by_callback = True  # the model skips the duplicate validation pass

    def measure(self, model: Any, dataset: Any) -> dict[str, float]:
        """bits/dim of ``model`` on (the first ``max_examples`` of) ``dataset``: {"bpd": ...,
        "bpd_stderr": ..., and for a conditional model "bpd_conditional" and its stderr}."""
        n = len(dataset) if self.max_examples is None else min(len(dataset), self.max_examples)
        conditional = getattr(model, "conditional", False)

        def bits(start: int, stop: int) -> Tensor:
            xs, ys = zip(*(dataset[i] for i in range(start, stop)))
            x = torch.stack(xs).to(model.device)
            if not conditional:
                return model.nll_bits(x).double()[:, None]
            y = torch.as_tensor(ys, device=model.device)
            return torch.stack([model.marginal_nll_bits(x).double(), model.nll_bits(x, y).double()], 1)

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                per_example = map_chunks(n, self.chunk_size, self.seed, bits) / model.num_dims
        finally:
            model.train(was_training)
        values: dict[str, float] = {}
        for column, name in zip(per_example.T, (model.bpd_name, "bpd_conditional")):
            values[name], values[f"{name}_stderr"] = mean_and_stderr(column)
        return values

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if pl_module.likelihood is None:
            if not self._said:
                log.info("bits/dim: not applicable (the %s family has no likelihood)", pl_module.family)
                self._said = True
            return
        dataset = trainer.datamodule.split_dataset(split)
        values = self.measure(pl_module, dataset)
        bpd = pl_module.bpd_name
        if getattr(pl_module, "loss_is_bpd", False):
            values["loss"] = values[bpd]
        for name, value in values.items():
            pl_module.log(f"{split}/{name}", value, prog_bar=name == bpd, sync_dist=False, rank_zero_only=False)
        if not self._said:
            kind = "exact" if pl_module.likelihood == "exact" else "an upper bound"
            n = len(dataset) if self.max_examples is None else min(len(dataset), self.max_examples)
            marginal = " (marginal over the classes; bpd_conditional: given the true label)" \
                if getattr(pl_module, "conditional", False) else ""
            log.info("bits/dim (%s) is %s%s, over %d %s examples: %.4f +- %.4f (standard error)",
                     pl_module.family, kind, marginal, n, split, values[bpd], values[f"{bpd}_stderr"])
            self._said = True

    def metric_names(self, model: pl.LightningModule) -> list[str]:
        if model.likelihood is None:
            return []
        names = [f"val/{model.bpd_name}", f"val/{model.bpd_name}_stderr"]
        if getattr(model, "conditional", False):
            names += ["val/bpd_conditional", "val/bpd_conditional_stderr"]
        return names

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._measure(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(trainer, pl_module, "test")
