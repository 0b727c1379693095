"""The contract every model family implements (see DESIGN.md, contracts 1-3)."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.errors import ConfigError, TrainingDiverged
from genlab.nets.likelihoods import value_dtype


#: nats per bit
LOG2 = math.log(2.0)


class GenerativeModel(pl.LightningModule):
    """Base LightningModule of every family.

    Batches are ``(x, y)``: ``x`` integer values in 0..vocab_size-1 of shape [B, *data_shape]
    ([B, C, H, W] images, [B, C, T] audio), ``y`` the class label (-1 where the dataset has none).
    Each family maps ``x`` into its own space itself.
    """

    #: family name, matched against ``Sampler.families``
    family: ClassVar[str] = ""
    #: "exact", "bound", or None for families without a likelihood (bits/dim not applicable)
    likelihood: ClassVar[Optional[str]] = None
    #: what the model's own steps log, as ``train/<name>`` and ``val/<name>``
    step_metrics: ClassVar[tuple[str, ...]] = ("loss",)
    #: what the likelihood is given besides a class label (e.g. "mel": a vocoder's own clip's
    #: mel-spectrogram): its bits/dim are then not -log2 p(x), and are logged as ``bpd_given_<it>``
    likelihood_given: ClassVar[str] = ""
    #: maps data to latent vectors and back (``encode_mean``, ``decode_latent``, ``latent_dim``):
    #: latent directions and manifolds (genlab.latents) serve these families
    has_encoder: ClassVar[bool] = False
    #: the validation/test loss is the bits/dim the bits/dim callback measures (flows): with that
    #: callback present the model skips its own evaluation pass and the callback logs
    #: ``<stage>/loss`` from the same numbers (``eval_loss_by_callback`` is then True)
    loss_is_bpd: ClassVar[bool] = False
    #: the sub-module the EMA callback averages, what samples are drawn from ("" = the whole model)
    averaged_module: ClassVar[str] = ""
    #: sub-modules of the averaged one that keep moving averages of their own (an EMA codebook):
    #: the EMA callback copies their current state into the average instead of averaging it again
    self_averaging: ClassVar[tuple[str, ...]] = ()
    #: how many axes ``data_shape`` has for this family (3: images [C, H, W], 2: [C, T]; None: any)
    data_dims: ClassVar[Optional[int]] = 3
    #: the one vocabulary the family's maths is written for (None: any ``vocab_size``)
    fixed_vocab_size: ClassVar[Optional[int]] = 256

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        conditional: bool = False,
        vocab_size: int = 256,
    ) -> None:
        super().__init__()
        shape = [int(s) for s in data_shape]
        what = f"{type(self).__name__} (family {self.family})"
        if self.data_dims is not None and len(shape) != self.data_dims:
            raise ConfigError(
                f"dataset.data_shape={shape} has {len(shape)} axes, but {what} takes data of "
                f"{self.data_dims} axes ([C, H, W] images have 3, [C, T] audio 2): "
                "pick a dataset of that kind or a model for this one."
            )
        if self.fixed_vocab_size is not None and int(vocab_size) != self.fixed_vocab_size:
            raise ConfigError(
                f"dataset.vocab_size={vocab_size}, but {what} is written for {self.fixed_vocab_size} values "
                f"per dimension: use {self.fixed_vocab_size}-value data or a family that takes any vocabulary."
            )
        if conditional and num_classes <= 0:
            raise ConfigError(
                "model.conditional=true needs a labelled dataset, but dataset.num_classes is "
                f"{num_classes}; pick a labelled dataset or set model.conditional=false"
            )
        #: the shape of one example: [C, H, W] for images, [C, T] for audio
        self.data_shape: tuple[int, ...] = tuple(shape)
        #: values per dimension: x holds integers in 0..vocab_size-1
        self.vocab_size = int(vocab_size)
        self.num_classes = int(num_classes)
        #: draws and learns p(x | class); samplers pass labels to such models
        self.conditional = bool(conditional)
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self._loss_checked = False  # check_finite ran since the last backward pass
        self.eval_loss_by_callback = False

    @property
    def bpd_name(self) -> str:
        """The name its bits/dim are logged under: ``bpd`` for -log2 p(x) (or p(x|y) marginalised)."""
        return f"bpd_given_{self.likelihood_given}" if self.likelihood_given else "bpd"

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    @property
    def value_dtype(self) -> torch.dtype:
        """The integer dtype of data with this vocabulary (uint8 up to 256 values)."""
        return value_dtype(self.vocab_size)

    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """-log2 p(x) of the discrete ``x``, one value per example (shape [B])."""
        raise NotImplementedError(f"the {self.family} family has no likelihood")

    def encode_mean(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Families with ``has_encoder``: each example's latent as one vector [B, latent_dim]
        (a VAE's posterior mean, a flow's z of the centre of each pixel's bin)."""
        raise NotImplementedError(f"the {self.family} family has no encoder")

    def decode_latent(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Families with ``has_encoder``: data (uint8, the data contract) from latent vectors [B, latent_dim]."""
        raise NotImplementedError(f"the {self.family} family has no encoder")

    def class_log_prior(self) -> Tensor:
        """log p(y) over the classes of a conditional model: uniform, as the samplers draw them."""
        return torch.full((self.num_classes,), -math.log(self.num_classes), dtype=torch.float64)

    def marginal_nll_bits(self, x: Tensor) -> Tensor:
        """-log2 p(x) = -log2 sum_y p(y) p(x|y) of a conditional model, exact over the classes
        (one ``nll_bits`` pass per class, summed in log space). Where ``nll_bits`` is an upper
        bound, so is this (each p(x|y) is bounded from below)."""
        per_class = torch.stack([
            self.nll_bits(x, torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)).double()
            for c in range(self.num_classes)
        ], 1)  # [B, classes], bits
        log_joint = self.class_log_prior().to(x.device)[None] - per_class * math.log(2.0)
        return -torch.logsumexp(log_joint, 1) / math.log(2.0)

    def class_labels(self, y: Optional[Tensor]) -> Optional[Tensor]:
        """The labels a conditional model is given, as long integers (None for an unconditional
        model); a conditional one refuses a missing label or the -1 of unlabelled data."""
        if not self.conditional:
            return None
        if y is None or (y < 0).any():
            raise ValueError(f"a conditional {type(self).__name__} needs class labels y in 0..{self.num_classes - 1}")
        return y.long()

    def log_stage(self, stage: str, metrics: dict[str, Tensor], batch_size: int) -> None:
        """Log ``<stage>/<name>`` for each metric: per step while training (the loss on the
        progress bar), per epoch and reduced over processes in validation and test."""
        on_step = stage == "train"
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                     prog_bar=on_step and name == "loss", batch_size=batch_size)

    def stands_on(self) -> dict[str, Any]:
        """The earlier runs this model is built on (a second stage names its first), recorded
        in the run's metrics.json and checkpoints so that a report can trace them: stage name ->
        {"ckpt": the checkpoint's path, "run_dir": its run directory, "sha256": the checkpoint's,
        and anything else worth recording}."""
        return {}

    def check_trainer(self, trainer_cfg: Any) -> None:
        """Raise ConfigError for ``trainer.*`` settings this model cannot honour (called before
        training; e.g. a family with manual optimization refuses Lightning's gradient clipping)."""

    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        optimizer = self._optimizer_factory(params=self.parameters())
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """One batch of ``stage`` ("train", "val" or "test"): log ``<stage>/<metric>`` and return
        the loss. Families whose stages differ override the Lightning step methods instead."""
        raise NotImplementedError(f"{type(self).__name__} implements neither shared_step nor training_step")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test")

    def check_finite(self, **terms: Tensor) -> None:
        """Stop the run with a clear message when any loss term is NaN or inf.

        Families call this in ``training_step`` with their named loss terms before the backward
        pass; ``on_before_backward`` calls it with the total loss for any family that does not.
        All ranks take the same decision, so under DDP no rank is left waiting in a collective.
        """
        self._loss_checked = True
        finite = all(bool(torch.isfinite(v.detach()).all()) for v in terms.values())
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        values = ", ".join(f"{name}={float(v.detach().float().mean()):.4g}" for name, v in terms.items())
        raise TrainingDiverged(
            f"the training loss is not finite at step {self.global_step} (epoch {self.current_epoch}): "
            f"{values}. The run stops here; the last checkpoint written before this step is kept. "
            "Lower optimizer.lr, set trainer.gradient_clip_val, or check the data for bad values."
        )

    def on_before_backward(self, loss: Tensor) -> None:
        # once per backward pass: skipped when the family checked its named terms already
        if self._loss_checked:
            self._loss_checked = False
            return
        self.check_finite(loss=loss)
        self._loss_checked = False
