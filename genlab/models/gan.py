"""Generative adversarial networks: ``model=dcgan`` with three losses, optionally class-conditional.

A generator G maps latents z ~ N(0, I) to images; a discriminator D tells them from real ones.
``loss`` picks the game:

- ``nonsaturating``: D minimises softplus(-D(x)) + softplus(D(G(z))) (binary cross-entropy on
  logits); G minimises softplus(-D(G(z))), the practical form of the minimax game
  (Goodfellow et al., 2014).
- ``wgan_gp``: the critic minimises D(G(z)) - D(x) + gp_weight * (||grad D(x_hat)|| - 1)^2 with
  x_hat between real and fake images (Gulrajani et al., 2017); G minimises -D(G(z)).
  ``n_critic`` critic steps per generator step.
- ``hinge``: D minimises relu(1 - D(x)) + relu(1 + D(G(z))) with spectral normalisation in D
  (Miyato et al., 2018); G minimises -D(G(z)).

Training uses Lightning's manual optimization: one training batch of ``dataset.batch_size`` real
images is split into ``n_critic`` discriminator minibatches, one D step each, then one G step.
Lightning counts only the generator's steps (``trainer.global_step``, ``trainer.max_steps``,
checkpoint names, ``every_n_train_steps``): one per training batch. The EMA callback averages
the generator only (``averaged_module``), once per generator step; validation judges the EMA
generator's images with the discriminator as trained.

``diffaugment`` (e.g. ``[color,translation,cutout]``) puts DiffAugment in front of the
discriminator (``genlab.nets.diffaugment``), for every loss. ``AdversarialModel`` holds what this
family shares with ``model=stylegan`` (genlab.models.stylegan).

There is no likelihood: bits/dim is not applicable and FID is the metric.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch.nn.parallel import DistributedDataParallel

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.nets.dcgan import DISC_NORMS, Discriminator, Generator, resolution_levels
from genlab.nets.diffaugment import diff_augment, parse_policy
from genlab.nets.likelihoods import to_unit_range


# ----- the losses, on discriminator outputs (logits / critic values) ----------------------
def nonsaturating_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsaturating_g_loss(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


def wasserstein_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def critic_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


#: loss name -> (discriminator loss, generator loss, default D normalisation, default n_critic)
LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor], str, int]] = {
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss, "batch", 1),
    "wgan_gp": (wasserstein_d_loss, critic_g_loss, "layer", 5),
    "hinge": (hinge_d_loss, critic_g_loss, "spectral", 1),
}


def gradient_penalty(
    discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, eps: Optional[Tensor] = None
) -> Tensor:
    """Mean over examples of (||d D(x_hat) / d x_hat||_2 - 1)^2, x_hat = eps x + (1 - eps) G(z),
    eps ~ U[0, 1] per example (pass ``eps`` [B] to fix it). Differentiable (create_graph)."""
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    eps = eps.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


class AdversarialModel(GenerativeModel):
    """What every GAN of genlab shares: two optimizers stepped by hand (manual optimization,
    correct under mixed precision and DDP), the generator averaged by the EMA callback,
    DiffAugment in front of the discriminator, validation of the game, no likelihood.

    A subclass builds ``generator`` and ``discriminator``, sets ``d_loss_fn``/``g_loss_fn`` and
    implements ``_fake`` and ``training_step`` (through ``augment``, ``_discriminate``,
    ``_uncounted_step`` and ``_log_train``)."""

    family = "gan"
    likelihood = None
    #: D(x), D(G(z)) (mean discriminator output on real / generated images) and each loss
    step_metrics = ("d_loss", "g_loss", "d_real", "d_fake")
    averaged_module = "generator"
    d_loss_fn: Callable[[Tensor, Tensor], Tensor]
    g_loss_fn: Callable[[Tensor], Tensor]

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        gradient_clip_val: Optional[float] = None,
        diffaugment: Optional[Union[str, Sequence[str]]] = None,
        d_optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(tuple(data_shape), num_classes, optimizer, scheduler, conditional, vocab_size)
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ConfigError(f"model.gradient_clip_val must be > 0 or null, got {gradient_clip_val}")
        if scheduler is not None:
            raise ConfigError("model.scheduler is not supported by the GAN (two optimizers); set it to null")
        try:
            self.augment_policy = parse_policy(diffaugment)
        except ValueError as err:
            raise ConfigError(f"model.diffaugment={list(diffaugment) if not isinstance(diffaugment, str) else diffaugment!r}: "
                              f"{err}, or null") from None
        try:
            resolution_levels(self.data_shape[1])
        except ValueError as err:
            raise ConfigError(f"dataset.image_size: {err}") from None
        if self.data_shape[1] != self.data_shape[2]:
            raise ConfigError(f"{type(self).__name__} needs square images, got {self.data_shape[1:]}")
        self.automatic_optimization = False
        self.gradient_clip_val = gradient_clip_val
        self._d_optimizer_factory = d_optimizer

    def _optimizers(self, default: Callable[..., torch.optim.Optimizer]) -> tuple[torch.optim.Optimizer, ...]:
        """(G's, D's) optimizers: ``optimizer`` (else ``default``) for G, ``d_optimizer`` (else
        G's factory) for D."""
        g_factory = self._optimizer_factory or default
        d_factory = self._d_optimizer_factory or g_factory
        return g_factory(params=self.generator.parameters()), d_factory(params=self.discriminator.parameters())

    # ----- what the trainer config must not ask for --------------------------------------
    def check_trainer(self, trainer_cfg: DictConfig) -> None:
        if (trainer_cfg.get("gradient_clip_val") or 0) > 0:
            raise ConfigError(
                f"trainer.gradient_clip_val={trainer_cfg.gradient_clip_val}: the GAN steps its two "
                "optimizers itself (manual optimization), which Lightning's clipping does not cover; "
                "set model.gradient_clip_val instead (and trainer.gradient_clip_val=null)"
            )
        if (trainer_cfg.get("accumulate_grad_batches") or 1) != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer_cfg.accumulate_grad_batches}: the GAN steps "
                "its optimizers itself (manual optimization) and does not accumulate; raise "
                "dataset.batch_size instead and set trainer.accumulate_grad_batches=1"
            )

    # ----- the primitives samplers use (see genlab.samplers.truncation) ---------------------
    latent_dim: int
    #: how many layers read a style w (``mix_styles`` can give each its own); 1 = the DCGAN's map
    num_ws: int = 1

    def prior_latents(self, n: int, bound: Optional[float] = None) -> Tensor:
        """z ~ N(0, I) [n, latent_dim]; with ``bound``, each component drawn from N(0, 1)
        truncated to [-bound, bound] (by its inverse CDF: no redraw loop, any bound > 0 works)."""
        z = torch.empty(n, self.latent_dim, device=self.device)
        if bound is None:
            return z.normal_()
        return torch.nn.init.trunc_normal_(z, 0.0, 1.0, -bound, bound)

    def mix_styles(self, w_a: Tensor, w_b: Tensor, layer: int) -> Tensor:
        """Styles that take w_a before ``layer`` and w_b from it on (StyleGAN's style mixing);
        a generator with a single input (the DCGAN's) has nothing to mix."""
        raise ConfigError(f"{type(self).__name__} feeds its style to one layer only, so there are no styles to "
                          "mix: style mixing needs model=stylegan")

    # ----- the pieces of a training step --------------------------------------------------
    def augment(self, x: Tensor) -> Tensor:
        """DiffAugment (``model.diffaugment``) of images the discriminator is about to judge in
        training; real and generated images alike, in D's and in G's steps."""
        return diff_augment(x, self.augment_policy) if self.augment_policy else x

    def _fake(self, n: int, y: Optional[Tensor], keep_graph: bool) -> Tensor:
        raise NotImplementedError

    def _discriminate(self, x: Tensor, y: Optional[Tensor]) -> Tensor:
        return self.discriminator(x, y if self.conditional else None).float()

    def _labels(self, y: Tensor) -> Optional[Tensor]:
        if not self.conditional:
            return None
        if (y < 0).any():
            raise ValueError("a conditional GAN needs a labelled dataset (the batch holds y = -1)")
        return y

    def _ddp_needs_every_parameter(self) -> bool:
        # Lightning wraps the whole module in DDP, whose reducer (find_unused_parameters=False,
        # the default) expects a gradient for every parameter in each backward: there the D loss
        # keeps the generator in its graph (its gradients are thrown away before the G step).
        model = self.trainer.model if self._trainer is not None else None
        return isinstance(model, DistributedDataParallel) and not model.find_unused_parameters

    @contextmanager
    def _frozen_discriminator(self) -> Iterator[None]:
        """For G's step: D's weights need no gradients there (G's gradient only passes through
        D to the images), so their computation is skipped, as StyleGAN2 does. Not under DDP,
        whose reducer expects a gradient for every parameter in each backward."""
        if self._ddp_needs_every_parameter():
            yield
            return
        self.discriminator.requires_grad_(False)
        try:
            yield
        finally:
            self.discriminator.requires_grad_(True)

    def _uncounted_step(self, optimizer: LightningOptimizer) -> None:
        """``optimizer.step()`` without adding to Lightning's step count.

        Under manual optimization Lightning counts every ``LightningOptimizer.step()`` as a
        training step (Lightning-AI/pytorch-lightning#17958), which would count the D and G steps
        together. The discriminator steps through the strategy, the call that
        ``LightningOptimizer.step()`` makes between its two counting hooks: the precision plugin
        still unscales fp16 gradients and calls ``on_before_optimizer_step`` (clipping)."""
        self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this inside optimizer.step(), after unscaling the gradients under fp16.
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def _log_train(self, logs: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, on_step=True, on_epoch=False,
                      prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """D(x) on held-out images vs D(G(z)) (with the EMA weights when the EMA callback is on):
        a held-out D(x) far below the training one means D memorises the training set."""
        x, y = batch
        labels = self._labels(y)
        d_real = self._discriminate(to_unit_range(x), labels)
        fake = self._discriminate(self._fake(x.shape[0], labels, False), labels)
        self.log_dict(
            {"val/d_real": d_real.mean(), "val/d_fake": fake.mean(),
             "val/d_loss": self.d_loss_fn(d_real, fake), "val/g_loss": self.g_loss_fn(fake)},
            on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0],
        )

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass  # FID is measured by the callback; there is no likelihood


class GAN(AdversarialModel):
    #: latents drawn to estimate the mean of the generator's first feature map (``mean_mapped``)
    mean_samples = 4096

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        loss: str = "nonsaturating",
        latent_dim: int = 100,
        g_width: int = 64,
        d_width: int = 64,
        max_width: int = 512,
        disc_norm: Optional[str] = None,
        n_critic: Optional[int] = None,
        gp_weight: float = 10.0,
        gradient_clip_val: Optional[float] = None,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        d_optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        diffaugment: Optional[Union[str, Sequence[str]]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(data_shape, num_classes, conditional, optimizer, scheduler, gradient_clip_val, diffaugment,
                         d_optimizer, vocab_size)
        require_positive("model", latent_dim=latent_dim, g_width=g_width, d_width=d_width, max_width=max_width)
        if gp_weight < 0:
            raise ConfigError(f"model.gp_weight={gp_weight} must be a number >= 0")
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} is not known; use one of {sorted(LOSSES)}")
        self.d_loss_fn, self.g_loss_fn, default_norm, default_n_critic = LOSSES[loss]
        disc_norm = disc_norm or default_norm
        if disc_norm not in DISC_NORMS:
            raise ConfigError(f"model.disc_norm={disc_norm!r} is not known; use one of {list(DISC_NORMS)} or null")
        if loss == "wgan_gp" and disc_norm == "batch":
            raise ConfigError(
                "model.disc_norm=batch with model.loss=wgan_gp: batch norm mixes the examples, so the "
                "gradient penalty is no longer per example; use disc_norm=layer (default), spectral or none"
            )
        n_critic = default_n_critic if n_critic is None else int(n_critic)
        if n_critic < 1:
            raise ConfigError(f"model.n_critic must be >= 1, got {n_critic}")
        self.loss = loss
        self.latent_dim = int(latent_dim)
        self.n_critic = n_critic
        self.gp_weight = float(gp_weight) if loss == "wgan_gp" else 0.0
        n_cond = num_classes if self.conditional else 0
        self.generator = Generator(self.data_shape, self.latent_dim, g_width, max_width, n_cond)
        self.discriminator = Discriminator(self.data_shape, d_width, max_width, n_cond, disc_norm)

    # ----- the primitives samplers use ---------------------------------------------------

    def map_latents(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The generator's first feature maps w for latents z (and labels y), float32."""
        return self.generator.map(z, self.class_labels(y)).float()

    @torch.no_grad()
    def mean_mapped(self, y: Optional[Tensor] = None) -> Tensor:
        """E_z[w(z, y)], the mean first feature map (per label y of a conditional model: [B, ...];
        else [1, ...]), estimated from ``mean_samples`` latents of a fixed seed, so it is the same
        at every call and leaves the global random state alone.

        This, not w at the mean latent z = 0, is the generator's "average": its first layer is
        linear without bias (batch norm follows), so z = 0 gives a feature map that is constant
        over space (batch norm's shift alone) and a blank image."""
        labels = torch.zeros(1, dtype=torch.long, device=self.device) if y is None else y.long()
        classes, index = labels.unique(return_inverse=True)
        rng = torch.Generator(self.device).manual_seed(0)
        total: Optional[Tensor] = None
        for chunk in torch.arange(self.mean_samples).split(1024):
            z = torch.randn(len(chunk), self.latent_dim, device=self.device, generator=rng)
            w = torch.stack([self.map_latents(z, c.expand(len(chunk)) if self.conditional else None).mean(0)
                             for c in classes])
            total = w * len(chunk) if total is None else total + w * len(chunk)
        assert total is not None
        return (total / self.mean_samples)[index]

    def synthesise(self, w: Tensor) -> Tensor:
        """Images in [-1, 1] (float32) for first feature maps w."""
        return self.generator.synthesise(w.to(next(self.generator.parameters()).dtype)).float()

    def generate(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images in [-1, 1] (float32) for latents z (and labels y for a conditional model)."""
        return self.generator(z, self.class_labels(y)).float()

    # ----- training ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return self._optimizers(lambda params: torch.optim.Adam(params, 2e-4, betas=(0.5, 0.999)))

    def _fake(self, n: int, y: Optional[Tensor], keep_graph: bool) -> Tensor:
        fake = self.generator(self.prior_latents(n), y if self.conditional else None)
        return fake if keep_graph else fake.detach()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        real = to_unit_range(x)
        labels = self._labels(y)
        opt_g, opt_d = self.optimizers()
        keep_graph = self._ddp_needs_every_parameter()
        logs: dict[str, Tensor] = {}
        # (a last batch smaller than n_critic makes fewer, one-image critic steps)
        for idx in torch.arange(x.shape[0], device=x.device).tensor_split(min(self.n_critic, x.shape[0])):
            y_i = None if labels is None else labels[idx]
            real_i, fake = self.augment(real[idx]), self.augment(self._fake(len(idx), y_i, keep_graph))
            d_real = self._discriminate(real_i, y_i)
            d_fake = self._discriminate(fake, y_i)
            d_loss = self.d_loss_fn(d_real, d_fake)
            terms = {"d_loss": d_loss}
            if self.gp_weight > 0:
                terms["gp"] = self._gradient_penalty(real_i, fake, y_i)
                d_loss = d_loss + self.gp_weight * terms["gp"]
                terms["d_loss"] = d_loss
            self.check_finite(**terms)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._uncounted_step(opt_d)
        logs.update(terms, d_real=d_real.mean(), d_fake=d_fake.mean())

        y_g = None if labels is None else labels[idx]
        g_loss = self.g_loss_fn(self._discriminate(self.augment(self._fake(len(idx), y_g, True)), y_g))
        self.check_finite(g_loss=g_loss)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        logs["g_loss"] = g_loss
        self._log_train(logs, x.shape[0])

    def _gradient_penalty(self, real: Tensor, fake: Tensor, y: Optional[Tensor]) -> Tensor:
        # In full precision: under fp16 autocast the input gradients can underflow.
        with torch.autocast(self.device.type, enabled=False):
            return gradient_penalty(lambda x: self._discriminate(x, y), real.float(), fake.float())
