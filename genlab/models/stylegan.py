"""StyleGAN2 (Karras et al., 2020): ``model=stylegan``, unconditional.

A mapping network turns z ~ N(0, I) into a style w; modulated, demodulated convolutions with
per-layer noise grow a learned constant into an image (skip generator); a residual
discriminator with minibatch standard deviation judges it (``genlab.nets.stylegan``).

Training (non-saturating loss, Lightning's manual optimization as in ``model=dcgan``, sharing
``genlab.models.gan.AdversarialModel``):

- style mixing regularisation: with probability ``mixing_prob`` a batch's layers from a random
  cut-off on take the w of a second latent;
- lazy R1: every ``r1_every`` steps the D loss adds ``r1_gamma / 2 * r1_every * E||grad D(x)||^2``
  on real images (the penalty scaled by its interval, so its average weight is r1_gamma / 2);
- optional lazy path-length regularisation of G (``pl_weight`` > 0, every ``pl_every`` steps);
- Adam's lr and betas adjusted for the lazy intervals (c = every / (every + 1));
- the EMA callback averages the generator; DiffAugment (``diffaugment``) as for every GAN.

Truncation happens in W: the truncation sampler pulls w toward the mapping network's moving
average of w (``mean_mapped``), so psi = 0 gives the image of the average w.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.gan import AdversarialModel, nonsaturating_d_loss, nonsaturating_g_loss
from genlab.nets.likelihoods import to_unit_range
from genlab.nets.stylegan import NOISE_MODES, Discriminator, Generator


def r1_penalty(discriminate: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """E_x ||d D(x) / d x||^2 over the real images (differentiable: create_graph)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminate(real).sum(), real, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


def lazy_r1(discriminate: Callable[[Tensor], Tensor], real: Tensor, gamma: float, every: int, step: int) -> Optional[Tensor]:
    """The lazy R1 term of D's loss at training step ``step``: gamma / 2 * every * R1 on the
    steps divisible by ``every``, None (no term, no cost) on the others."""
    if gamma <= 0 or step % every:
        return None
    return 0.5 * gamma * every * r1_penalty(discriminate, real)


def in_data_range(images: Tensor) -> Tensor:
    """The synthesis's output, an unbounded linear sum of toRGB outputs, mapped into the data
    range [-1, 1] by tanh: what the discriminator judges and what is sampled alike.

    Raw, D judged values no sample has: samples are clamped (``to_uint8``), real images never
    leave [-1, 1], and digits and MNIST are mostly exactly -1, so a background at -1.3 told fakes
    (the trained digits generator's raw outputs spanned -3.9 ... 2.2). A clamp with the gradient
    passed straight through let the raw output drift far out of range (binary samples; steps
    that no longer change the clamped pixels), and D still won on MNIST; with tanh it did not
    (bench/stylegan.md)."""
    return torch.tanh(images)


def mix_styles(w_a: Tensor, w_b: Tensor, layer: int, num_ws: int) -> Tensor:
    """ws [B, num_ws, w_dim]: w_a for the layers before ``layer``, w_b from ``layer`` on."""
    ws = w_a.unsqueeze(1).repeat(1, num_ws, 1)
    ws[:, layer:] = w_b.unsqueeze(1)
    return ws


class StyleGAN(AdversarialModel):

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        latent_dim: int = 128,
        w_dim: int = 128,
        mapping_layers: int = 4,
        mapping_lr_mul: float = 0.01,
        g_width: int = 32,
        d_width: int = 32,
        max_width: int = 256,
        mbstd_group: int = 4,
        mixing_prob: float = 0.9,
        r1_gamma: float = 0.1,
        r1_every: int = 16,
        pl_weight: float = 0.0,
        pl_every: int = 4,
        sample_noise: str = "random",
        gradient_clip_val: Optional[float] = None,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        d_optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        diffaugment: Optional[Union[str, Sequence[str]]] = None,
        vocab_size: int = 256,
    ) -> None:
        if conditional:
            raise ConfigError("model.conditional=true: model=stylegan is unconditional; use model=dcgan "
                              "model.conditional=true for class-conditional samples, or conditional=false")
        super().__init__(data_shape, num_classes, False, optimizer, scheduler, gradient_clip_val, diffaugment,
                         d_optimizer, vocab_size)
        require_positive("model", latent_dim=latent_dim, w_dim=w_dim, mapping_layers=mapping_layers,
                         g_width=g_width, d_width=d_width, max_width=max_width, mbstd_group=mbstd_group,
                         r1_every=r1_every, pl_every=pl_every)
        if not mapping_lr_mul > 0:
            raise ConfigError(f"model.mapping_lr_mul={mapping_lr_mul} must be a number > 0")
        if not 0 <= mixing_prob <= 1:
            raise ConfigError(f"model.mixing_prob={mixing_prob} must be a probability in [0, 1]")
        for key, value in (("r1_gamma", r1_gamma), ("pl_weight", pl_weight)):
            if value < 0:
                raise ConfigError(f"model.{key}={value} must be a number >= 0 (0 = off)")
        if sample_noise not in NOISE_MODES:
            raise ConfigError(f"model.sample_noise={sample_noise!r} is not known; use one of {list(NOISE_MODES)}")
        self.d_loss_fn, self.g_loss_fn = nonsaturating_d_loss, nonsaturating_g_loss
        self.latent_dim = int(latent_dim)
        self.mixing_prob = float(mixing_prob)
        self.r1_gamma, self.r1_every = float(r1_gamma), int(r1_every)
        self.pl_weight, self.pl_every = float(pl_weight), int(pl_every)
        self.sample_noise = sample_noise
        self.generator = Generator(self.data_shape, self.latent_dim, w_dim, mapping_layers, g_width, max_width,
                                   mapping_lr_mul)
        self.discriminator = Discriminator(self.data_shape, d_width, max_width, mbstd_group)
        self.num_ws = self.generator.num_ws
        self.register_buffer("pl_mean", torch.zeros(()))

    # ----- the primitives samplers use (genlab.samplers.truncation) -----------------------
    def map_latents(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Styles w [n, w_dim] of latents z (float32)."""
        return self.generator.mapping(z).float()

    def mean_mapped(self, y: Optional[Tensor] = None) -> Tensor:
        """The mapping network's moving average of w over training, [1, w_dim]: the centre of
        truncation in W (StyleGAN's w_avg)."""
        return self.generator.mapping.w_avg.float().unsqueeze(0)

    def synthesise(self, w: Tensor) -> Tensor:
        """Images in [-1, 1] (float32) for styles w [n, w_dim] (one per image) or ws [n, num_ws,
        w_dim] (one per layer, see ``mix_styles``); noise as ``model.sample_noise`` says."""
        ws = self.generator.broadcast(w.to(self.generator.synthesis.const.dtype))
        return in_data_range(self.generator.synthesis(ws, self.sample_noise)).float()

    def mix_styles(self, w_a: Tensor, w_b: Tensor, layer: int) -> Tensor:
        """ws that take w_a for layers 0..layer-1 and w_b from ``layer`` on (coarse layers
        come first: a low ``layer`` keeps only w_a's pose, a high one its details too)."""
        if not 0 <= layer <= self.num_ws:
            raise ValueError(f"layer {layer} out of range 0..{self.num_ws}")
        return mix_styles(w_a, w_b, layer, self.num_ws)

    # ----- training ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_g, opt_d = self._optimizers(lambda params: torch.optim.Adam(params, 2.5e-3, betas=(0.0, 0.99)))
        # lazy regularisation: a penalty every k steps takes k / (k + 1) of the steps' lr and momentum
        for opt, every, on in ((opt_g, self.pl_every, self.pl_weight > 0), (opt_d, self.r1_every, self.r1_gamma > 0)):
            if on and every > 1:
                c = every / (every + 1)
                for group in opt.param_groups:
                    group["lr"] *= c
                    if "betas" in group:
                        group["betas"] = tuple(b**c for b in group["betas"])
        return opt_g, opt_d

    def _ws(self, n: int) -> Tensor:
        """Styles for n training images: with probability ``mixing_prob`` (in training) the
        layers from a random cut-off on take the w of a second latent."""
        w = self.generator.mapping(self.prior_latents(n))
        if self.training and self.mixing_prob > 0 and float(torch.rand(())) < self.mixing_prob:
            layer = int(torch.randint(1, self.num_ws, ()))
            return mix_styles(w, self.generator.mapping(self.prior_latents(n)), layer, self.num_ws)
        return self.generator.broadcast(w)

    def _fake(self, n: int, y: Optional[Tensor], keep_graph: bool) -> Tensor:
        if keep_graph:
            return in_data_range(self.generator.synthesis(self._ws(n)))
        with torch.no_grad():  # D's step: no graph through G to build and throw away
            return in_data_range(self.generator.synthesis(self._ws(n)))

    def _r1(self, real: Tensor) -> Optional[Tensor]:
        # in full precision: under fp16 autocast the input gradients can underflow
        with torch.autocast(self.device.type, enabled=False):
            return lazy_r1(lambda x: self._discriminate(self.augment(x), None), real.float(), self.r1_gamma,
                           self.r1_every, self.global_step)

    def _path_length(self, n: int) -> Optional[Tensor]:
        """pl_weight * pl_every * E(|J_w^T y| - a)^2 with y ~ N(0, I / pixels) and a the moving
        mean of |J_w^T y| (StyleGAN2's path-length regulariser), every ``pl_every`` steps."""
        if self.pl_weight <= 0 or self.global_step % self.pl_every:
            return None
        with torch.autocast(self.device.type, enabled=False):
            ws = self._ws(max(1, n // 2))
            images = in_data_range(self.generator.synthesis(ws)).float()
            y = torch.randn_like(images) / (images.shape[2] * images.shape[3]) ** 0.5
            (grad,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean().detach(), 0.01))
            return self.pl_weight * self.pl_every * (lengths - self.pl_mean).square().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        real = to_unit_range(x)
        opt_g, opt_d = self.optimizers()
        keep_graph = self._ddp_needs_every_parameter()
        d_real = self._discriminate(self.augment(real), None)
        d_fake = self._discriminate(self.augment(self._fake(x.shape[0], None, keep_graph)), None)
        d_loss = self.d_loss_fn(d_real, d_fake)
        terms = {"d_loss": d_loss}
        r1 = self._r1(real)
        if r1 is not None:
            terms["r1"] = r1
        self.check_finite(**terms)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss + r1 if r1 is not None else d_loss)
        self._uncounted_step(opt_d)

        with self._frozen_discriminator():
            g_loss = self.g_loss_fn(self._discriminate(self.augment(self._fake(x.shape[0], None, True)), None))
            g_terms = {"g_loss": g_loss}
            pl = self._path_length(x.shape[0])
            if pl is not None:
                g_terms["pl"] = pl
            self.check_finite(**g_terms)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss + pl if pl is not None else g_loss)
        opt_g.step()
        self._log_train({**terms, **g_terms, "d_real": d_real.mean(), "d_fake": d_fake.mean()}, x.shape[0])
