"""Normalizing flows: ``model=nice``, ``model=realnvp`` and ``model=glow``, one multi-scale class.

A flow is a bijection f from dequantized images to latents, trained by maximum likelihood with the
change of variables log p(u) = log N(f(u); 0, I) + log|det df/du|. The 8-bit image x is dequantized
uniformly, u = (x + w) / 256 with w ~ U[0, 1)^D, so that (Jensen)

    -log2 P(x) <= E_w[-log2 p(u)] + 8 D,

an upper bound on the discrete negative log-likelihood in the convention every family shares:
``likelihood = "bound"``. A flow that is the identity with a uniform base on [0, 1) gives exactly
8 bits/dim. With ``eval_dequant_samples`` = k > 1, ``nll_bits`` uses the importance-weighted form
-log2 (1/k) sum_i p(u_i), a tighter bound (the uniform dequantizer is the proposal).

Architecture, per level: [RealNVP: ``steps`` checkerboard couplings], squeeze, ``steps`` steps of
[actnorm] [1x1 conv / fixed permutation] channel coupling, [NICE: diagonal scaling, one value per
dimension], then (except
at the last level) half of the channels are factored out as latents, through Glow's learned
prior (``learned_prior``) or straight to the N(0, I) base.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import LOG2, GenerativeModel
from genlab.nets.flows import (
    ActNorm,
    Bijection,
    Coupling,
    FlowSequence,
    InvConv1x1,
    Logit,
    Permutation,
    Scaling,
    Split,
    Squeeze,
)

COUPLINGS = ("additive", "affine")
MASKS = ("channel", "checkerboard_channel")
PERMUTATIONS = ("none", "reverse", "shuffle", "invconv", "invconv_lu")
NETS = ("conv", "resnet")
PREPROCESS = ("logit", "none")


def _choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"model.{key}={value!r} is not known; use one of {list(allowed)}")


def check_squeezable(image_size: int, levels: int) -> None:
    """Each level halves the image: the size must be a multiple of 2**levels."""
    factor = 2**levels
    if image_size % factor == 0:
        return
    near = sorted({max(factor, image_size // factor * factor), (image_size // factor + 1) * factor})
    fits = max((lv for lv in range(1, levels) if image_size % 2**lv == 0), default=0)
    fix = f"or set model.levels={fits}" if fits else "(no number of levels squeezes this size; resize the data)"
    raise ConfigError(
        f"dataset.image_size={image_size} cannot be squeezed by model.levels={levels}: every level "
        f"halves the image, so the size must be a multiple of {factor}. Use dataset.image_size="
        f"{' or '.join(str(s) for s in near)} {fix}."
    )


class Flow(GenerativeModel):
    family = "flow"
    likelihood = "bound"
    step_metrics = ("loss",)
    has_encoder = True
    fixed_vocab_size = None  # the dequantization cells are 1/vocab_size wide
    loss_is_bpd = True

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        levels: int = 2,
        steps: int = 4,
        coupling: str = "affine",
        masks: str = "channel",
        permutation: str = "invconv_lu",
        actnorm: bool = True,
        scaling: bool = False,
        learned_prior: bool = True,
        hidden: int = 64,
        net: str = "conv",
        blocks: int = 2,
        scale_bound: float = 2.0,
        preprocess: str = "logit",
        logit_alpha: float = 0.05,
        eval_dequant_samples: int = 1,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(tuple(data_shape), num_classes, optimizer, scheduler, vocab_size=vocab_size)
        for key, value, allowed in (("coupling", coupling, COUPLINGS), ("masks", masks, MASKS),
                                    ("permutation", permutation, PERMUTATIONS), ("net", net, NETS),
                                    ("preprocess", preprocess, PREPROCESS)):
            _choice(key, value, allowed)
        require_positive("model", levels=levels, steps=steps, hidden=hidden, blocks=blocks,
                         eval_dequant_samples=eval_dequant_samples)
        if not scale_bound > 0:
            raise ConfigError(f"model.scale_bound={scale_bound!r} must be a number > 0")
        if not 0 <= logit_alpha < 0.5:
            raise ConfigError(f"model.logit_alpha={logit_alpha!r} must be in [0, 0.5)")
        c, h, w = self.data_shape
        if h != w:
            raise ConfigError(f"flows need square images, got {h}x{w}")
        check_squeezable(h, levels)
        self.eval_dequant_samples = eval_dequant_samples
        self.pre: Optional[Bijection] = Logit(logit_alpha) if preprocess == "logit" else None

        coupling_kw = dict(affine=coupling == "affine", hidden=hidden, net=net, blocks=blocks,
                           scale_bound=scale_bound)
        stages, shapes = [], []
        for level in range(levels):
            layers: list[Bijection] = []
            if masks == "checkerboard_channel":
                layers += [Coupling(c, "checkerboard", parity=k, **coupling_kw) for k in range(steps)]
            layers.append(Squeeze())
            c, h = 4 * c, h // 2
            for k in range(steps):
                if actnorm:
                    layers.append(ActNorm(c))
                if permutation.startswith("invconv"):
                    layers.append(InvConv1x1(c, lu=permutation == "invconv_lu", seed=1000 * level + k))
                elif permutation != "none":
                    layers.append(Permutation(c, permutation, seed=1000 * level + k))
                # Reversing the channels already swaps the halves between steps; alternating the
                # parity as well would swap them back, and the same half would never be transformed.
                parity = 0 if permutation == "reverse" else k
                layers.append(Coupling(c, "channel", parity=parity, **coupling_kw))
            if scaling:
                layers.append(Scaling((c, h, h)))
            if level < levels - 1:
                layers.append(Split(c, learned_prior))
                shapes.append((c - c // 2, h, h))
                c = c // 2
            stages.append(FlowSequence(layers, name=f"level {level}"))
        shapes.append((c, h, h))
        self.levels = torch.nn.ModuleList(stages)
        self.latent_shapes = shapes

    def on_fit_start(self) -> None:
        rank_zero_info(
            f"flow: bits/dim is an upper bound on the 8-bit NLL (uniform dequantization, "
            f"{self.eval_dequant_samples} sample(s) per image; model.eval_dequant_samples=k tightens it); "
            f"latents per level: {self.latent_shapes}"
        )

    # ----- the bijection and its inverse --------------------------------------------------
    def dequantize(self, x: Tensor) -> Tensor:
        """x in 0..V-1 -> u = (x + w) / V, w ~ U[0, 1): a point of x's cell of [0, 1)^D (V = vocab_size)."""
        return (x.to(self.dtype) + torch.rand(x.shape, dtype=self.dtype, device=x.device)) / self.vocab_size

    def forward_flow(self, u: Tensor) -> tuple[list[Tensor], Tensor]:
        """u in [0, 1)^D -> (latents per level, log|det du -> latents|), one log-det per example."""
        logdet = u.new_zeros(u.shape[0])
        h = u
        if self.pre is not None:
            h, logdet = self.pre(h)
        latents = []
        for index, stage in enumerate(self.levels):
            h, ld = stage(h)
            logdet = logdet + ld
            if index < len(self.levels) - 1:
                keep = h.shape[1] // 2
                latents.append(h[:, keep:])
                h = h[:, :keep]
        latents.append(h)
        return latents, logdet

    def inverse_flow(self, latents: Sequence[Tensor]) -> Tensor:
        """Latents -> u (raises FlowInverseError naming the layer where values blow up)."""
        h = latents[-1]
        for index in reversed(range(len(self.levels))):
            if index < len(self.levels) - 1:
                h = torch.cat([h, latents[index]], 1)
            h = self.levels[index].inverse(h)
        return self.pre.inverse(h) if self.pre is not None else h

    def base_log_prob(self, latents: Sequence[Tensor]) -> Tensor:
        """log N(z; 0, I) summed over every latent of an example."""
        return sum(-0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1) for z in latents)

    def log_prob(self, u: Tensor) -> Tensor:
        """log density (nats) of dequantized images u in [0, 1)^D, in float32 even under autocast."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            latents, logdet = self.forward_flow(u)
            return self.base_log_prob(latents) + logdet

    # ----- the primitives samplers use ----------------------------------------------------
    def prior_latents(self, n: int, temperature: float = 1.0) -> list[Tensor]:
        return [temperature * torch.randn(n, *s, device=self.device, dtype=self.dtype)
                for s in self.latent_shapes]

    @torch.no_grad()
    def encode(self, x: Tensor) -> list[Tensor]:
        """Latents of 8-bit images, dequantized at the centre of each pixel's bin."""
        return self.forward_flow((x.to(self.dtype) + 0.5) / self.vocab_size)[0]

    @torch.no_grad()
    def decode(self, latents: Sequence[Tensor]) -> Tensor:
        """Latents -> data (each value of u in [0, 1) falls in one of vocab_size bins)."""
        u = self.inverse_flow(latents)
        return (u * self.vocab_size).floor().clamp(0, self.vocab_size - 1).to(self.value_dtype)

    @property
    def latent_dim(self) -> int:
        return sum(math.prod(s) for s in self.latent_shapes)

    def encode_mean(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The latents of every level as one vector (a flow's encoding is deterministic)."""
        return torch.cat([z.flatten(1) for z in self.encode(x)], dim=1)

    def decode_latent(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        sizes = [math.prod(s) for s in self.latent_shapes]
        return self.decode([part.view(len(z), *s) for part, s in zip(z.split(sizes, dim=1), self.latent_shapes)])

    # ----- training -----------------------------------------------------------------------
    def _nll_bits_once(self, x: Tensor) -> Tensor:
        log_pu = self.log_prob(self.dequantize(x))
        return -(log_pu - self.num_dims * math.log(self.vocab_size)) / LOG2

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Optional[Tensor]:
        if stage != "train" and self.eval_loss_by_callback:
            return None  # the bits/dim callback measures it once for val/bpd and val/loss
        x, _ = batch
        loss = self._nll_bits_once(x).mean() / self.num_dims  # bits/dim, one dequantization draw
        if stage == "train":
            self.check_finite(loss=loss)
        self.log_stage(stage, {"loss": loss}, x.shape[0])
        return loss


    # ----- likelihood ---------------------------------------------------------------------
    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None, k: Optional[int] = None) -> Tensor:
        """Upper bound on -log2 P(x) of the 8-bit x: -log2 (1/k) sum_i p(u_i) + 8 D, u_i uniform
        dequantizations of x (k=1: the plain dequantization bound)."""
        k = k or self.eval_dequant_samples
        log_pu = torch.stack([self.log_prob(self.dequantize(x)) for _ in range(k)])
        log_px = torch.logsumexp(log_pu, 0) - math.log(k) - self.num_dims * math.log(self.vocab_size)
        return -log_px / LOG2
