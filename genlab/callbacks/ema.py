"""Exponential moving average of the weights, on top of Lightning's WeightAveraging.

Validation, checkpoints ("state_dict" holds the averaged weights) and the final model use
the average. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short
run is not dominated by the random initial weights.

Sub-modules the model names in ``self_averaging`` keep moving averages of their own (the EMA
codebook of a VQ-VAE): the average holds a copy of their current state, not an average of it.

What is averaged is the sub-module the model names in ``averaged_module`` (the whole model when
it is empty): a family averages what it samples from. A GAN averages its generator only: an
average of spectrally normalised discriminator weights (and of their power-iteration vectors)
is not spectrally normalised, and validation must judge with the discriminator that trained.
"""

from __future__ import annotations

from copy import deepcopy
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel

from genlab.checks import require_fraction, require_positive


def averaged_prefix(pl_module: pl.LightningModule) -> str:
    """The state_dict prefix of the averaged sub-module ("" for the whole model)."""
    name = getattr(pl_module, "averaged_module", "")
    return f"{name}." if name else ""


def ema_update(decay: float, averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
    """averaged <- d * averaged + (1 - d) * current for a group of tensors of one device and
    dtype, d = min(decay, (1 + n) / (10 + n)). Floating tensors take fused multi-tensor (foreach)
    kernels, a few calls per step instead of a few per tensor; the arithmetic (two products, one
    sum, each rounded) is that of the per-tensor form, so the result is the same to the bit."""
    n = float(num_averaged)
    d = min(decay, (1.0 + n) / (10.0 + n))
    if averaged[0].is_floating_point():
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1.0 - d))
        return
    for a, c in zip(averaged, current):  # integer buffers (counters): as AveragedModel's own loop does
        a.copy_(d * a + (1.0 - d) * c)


class EMA(WeightAveraging):
    def __init__(self, decay: float = 0.999, every_n_steps: int = 1) -> None:
        require_fraction("callbacks.ema", decay=decay)
        require_positive("callbacks.ema", every_n_steps=every_n_steps)
        super().__init__(multi_avg_fn=partial(ema_update, decay))
        self.every_n_steps = every_n_steps
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.every_n_steps == 0

    @staticmethod
    def _target(pl_module: pl.LightningModule) -> nn.Module:
        return pl_module.get_submodule(getattr(pl_module, "averaged_module", ""))

    # Lightning's WeightAveraging averages the whole LightningModule; the methods below are its
    # own with the averaged sub-module in place of the module.
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._groups = None
            self._average_model = AveragedModel(
                model=self._target(pl_module), device=self._device or pl_module.device,
                use_buffers=self._use_buffers, **self._kwargs,
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            assert self._average_model is not None
            self._update_average(pl_module)
            self._copy_self_averaging(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._groups = None  # listed again once per epoch

    def _update_average(self, pl_module: pl.LightningModule) -> None:
        """``AveragedModel.update_parameters`` (the first update copies, later ones call
        ``ema_update`` per device and dtype, then ``n_averaged`` counts it) with the pairs of
        tensors listed and grouped once per epoch, not at every step: walking the module tree and
        detaching two tensors per parameter cost more than the fused arithmetic itself. The lists
        hold the parameter and buffer objects, so an in-place load or a ``.data`` swap is seen; a
        module that *replaces* a parameter or buffer object mid-epoch (``module.weight = Parameter(...)``)
        is averaged into the old object until the next epoch lists them again."""
        average, target = self._average_model, self._target(pl_module)
        assert average is not None
        if self._groups is None:
            averaged = [*average.module.parameters(), *average.module.buffers()]
            current = [*target.parameters(), *target.buffers()]
            if len(averaged) != len(current) or any(a.device != c.device for a, c in zip(averaged, current)):
                average.update_parameters(target)  # the average on another device: torch's own way
                return  # (listed again next time: a model moved to the average's device takes the fast way)
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for a, c in zip(averaged, current):
                pair = groups.setdefault((a.device, a.dtype), ([], []))
                pair[0].append(a)
                pair[1].append(c)
            self._groups = list(groups.values())
        with torch.no_grad():
            if average.n_averaged == 0:
                for a, c in self._groups:
                    torch._foreach_copy_(a, c)
            else:
                for a, c in self._groups:
                    average.multi_avg_fn(a, c, average.n_averaged)
            average.n_averaged += 1

    def _copy_self_averaging(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None
        for name in getattr(pl_module, "self_averaging", ()):
            current = self._target(pl_module).get_submodule(name).state_dict()
            self._average_model.module.get_submodule(name).load_state_dict(current)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # should_update never asks for epoch updates

    def _pairs(self, pl_module: pl.LightningModule) -> Any:
        assert self._average_model is not None
        average, current = self._average_model.module, self._target(pl_module)
        return zip([*average.parameters(), *average.buffers()], [*current.parameters(), *current.buffers()])

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        for average, current in self._pairs(pl_module):
            tmp = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: pl.LightningModule) -> None:
        for average, current in self._pairs(pl_module):
            current.data.copy_(average.data)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return super().on_save_checkpoint(trainer, pl_module, checkpoint)
        prefix, module = averaged_prefix(pl_module), "module."
        average = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {
            **checkpoint["state_dict"],
            **{prefix + k[len(module):]: v for k, v in average.items() if k.startswith(module)},
        }
        checkpoint["averaging_state"] = {k: v for k, v in average.items() if not k.startswith(module)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return super().on_load_checkpoint(trainer, pl_module, checkpoint)
        prefix = averaged_prefix(pl_module)
        average = {"module." + k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            self._average_model.load_state_dict({**average, **checkpoint["averaging_state"]})
            # the module was loaded from "state_dict" (the average): the current weights are these
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:  # a checkpoint written without the EMA: both start from its weights
            self._average_model.load_state_dict(deepcopy(average), strict=False)

    # Lightning swaps the average back at on_validation_epoch_end, before the metric callbacks'
    # own on_validation_epoch_end (bits/dim, FID, sample grids) has run; swap back only once
    # every callback has measured. The test stage after fit measures the average too.
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    # Lightning puts the average into the model at on_train_end, before the end-of-training
    # checkpoint (genlab.callbacks.run.LastCheckpoint, also at on_train_end: checkpoint callbacks
    # come last) is written, which would then hold the average twice and lose the raw weights.
    # The model becomes the average once fit is over instead, also where a resumed run had
    # nothing left to train.
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)
