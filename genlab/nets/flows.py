"""Bijections for normalizing flows (NICE, RealNVP, Glow), each a small module.

Every bijection maps ``x -> (y, logdet)`` in ``forward`` (``logdet`` = log|det dy/dx|, one value
per example, shape [B]) and ``y -> x`` in ``inverse``. Images are [B, C, H, W] tensors.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genlab.errors import CheckpointError, GenlabError


class FlowInverseError(GenlabError):
    """Inverting a flow produced NaN or inf values (the latents or the weights are out of range)."""


class Bijection(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0])


def soft_bound(raw: Tensor, bound: float) -> Tensor:
    """``bound * tanh(raw / bound)``: about ``raw`` near 0, never beyond +-bound."""
    return bound * torch.tanh(raw / bound)


# ----------------------------------------------------------------------------- coupling nets


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution initialised to zero, so that a new coupling layer is the identity."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def coupling_net(c_in: int, c_out: int, hidden: int, kind: str = "conv", blocks: int = 2) -> nn.Module:
    """The network inside a coupling layer. ``conv``: Glow's conv3x3-conv1x1-conv3x3;
    ``resnet``: RealNVP-style residual blocks. The last layer starts at zero."""
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1),
                             nn.ReLU(), ZeroConv2d(hidden, c_out))
    if kind == "resnet":
        return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), *(_ResBlock(hidden) for _ in range(blocks)),
                             nn.ReLU(), ZeroConv2d(hidden, c_out))
    raise ValueError(f"unknown coupling network {kind!r}: use 'conv' or 'resnet'")


# ----------------------------------------------------------------------------- couplings


def checkerboard(h: int, w: int, parity: int, like: Tensor) -> Tensor:
    """[1, 1, H, W] mask, 1 where (i + j + parity) is even: the pixels a coupling conditions on."""
    i = torch.arange(h, device=like.device).view(-1, 1)
    j = torch.arange(w, device=like.device).view(1, -1)
    return ((i + j + parity) % 2 == 0).to(like.dtype).view(1, 1, h, w)


class Coupling(Bijection):
    """Additive (NICE) or affine (RealNVP/Glow) coupling with a checkerboard or channel mask.

    The masked part ``a`` passes unchanged and conditions the rest ``b``:
    additive ``y_b = x_b + t(a)``; affine ``y_b = x_b * exp(s(a)) + t(a)`` with
    ``s = bound * tanh(raw / bound)`` so that no layer scales by more than ``exp(bound)``.
    ``parity`` chooses which half (channels) or which squares (checkerboard) condition.
    """

    def __init__(self, channels: int, mask: str = "channel", parity: int = 0, affine: bool = True,
                 hidden: int = 64, net: str = "conv", blocks: int = 2, scale_bound: float = 2.0) -> None:
        super().__init__()
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"unknown mask {mask!r}: use 'channel' or 'checkerboard'")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel mask needs at least 2 channels (squeeze first)")
        self.mask, self.parity, self.affine, self.scale_bound = mask, parity % 2, affine, scale_bound
        if mask == "channel":
            # parity 0 conditions on the first half of the channels, parity 1 on the second half
            self.c_a = channels // 2
            c_in, c_out = self.c_a, channels - self.c_a
        else:
            c_in = c_out = channels
        self.net = coupling_net(c_in, c_out * (2 if affine else 1), hidden, net, blocks)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning part a, transformed part b) of a channel mask."""
        if self.parity == 0:
            return x[:, : self.c_a], x[:, self.c_a:]
        return x[:, x.shape[1] - self.c_a:], x[:, : x.shape[1] - self.c_a]

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b] if self.parity == 0 else [b, a], 1)

    def _params(self, a: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        """log-scale s and shift t for the transformed part (zero where ``keep`` is 1)."""
        out = self.net(a)
        if self.affine:
            raw, t = out.chunk(2, dim=1)
            s = soft_bound(raw, self.scale_bound)
        else:
            s, t = torch.zeros_like(out), out
        if keep is not None:
            s, t = s * (1 - keep), t * (1 - keep)
        return s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "channel":
            a, b = self._split(x)
            s, t = self._params(a, None)
            return self._join(a, b * torch.exp(s) + t), s.flatten(1).sum(1)
        keep = checkerboard(x.shape[2], x.shape[3], self.parity, x)
        s, t = self._params(x * keep, keep)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mask == "channel":
            a, b = self._split(y)
            s, t = self._params(a, None)
            return self._join(a, (b - t) * torch.exp(-s))
        keep = checkerboard(y.shape[2], y.shape[3], self.parity, y)
        s, t = self._params(y * keep, keep)
        return (y - t) * torch.exp(-s)


# ----------------------------------------------------------------------------- normalisation


class ActNorm(Bijection):
    """Per-channel affine ``y = (x + loc) * exp(log_scale)`` (Glow).

    With ``data_init`` the first training batch sets loc/log_scale so that the output has zero
    mean and unit variance per channel. Under DDP the statistics are summed over all ranks
    (all_reduce), so every rank starts from the same parameters. Without ``data_init`` it
    starts as the identity.

    Whether it is initialised is the buffer ``initialized`` (in checkpoints, averaged by EMA,
    broadcast by DDP). Reading it is a host read (a device sync on a GPU), so it is read only
    until it is true: the flag ``_known_initialized`` remembers that, and loading a state dict
    clears it, so that a checkpoint's own ``initialized`` decides again (an initialised model
    loaded from a checkpoint does not initialise a second time; an uninitialised state does).
    """

    def __init__(self, channels: int, data_init: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(not data_init))
        self.eps = eps
        self._known_initialized = not data_init

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._known_initialized = False  # the loaded buffer decides at the next training forward

    @torch.no_grad()
    def _init_from(self, x: Tensor) -> None:
        x64 = x.detach().double().transpose(0, 1).flatten(1)  # [C, N]
        stats = torch.stack([x64.sum(1), x64.pow(2).sum(1), torch.full_like(x64[:, 0], x64.shape[1])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        mean = stats[0] / stats[2]
        std = (stats[1] / stats[2] - mean.pow(2)).clamp(min=0).sqrt()
        self.loc.copy_(-mean.view_as(self.loc))
        self.log_scale.copy_(-torch.log(std + self.eps).view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self._init_from(x)
            self._known_initialized = True
        y = (x + self.loc) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class Scaling(Bijection):
    """NICE's diagonal scaling (Dinh et al., 2014, section 3.3): ``y = x * exp(log_scale)`` with one
    learned scale per dimension, starting as the identity.

    One value per dimension, not per channel: the additive couplings preserve volume, so this is
    the only place where the flow can shrink the dimensions that hardly vary (the always-black
    border of a digit) and widen the others.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        if prefix + "initialized" in state_dict:  # the per-channel ActNorm that stood here before
            raise CheckpointError(
                "this NICE checkpoint was written before genlab fixed NICE (one scale per channel "
                "instead of one per dimension, and reversed couplings that left half of the pixels "
                "untransformed); it cannot be loaded as the fixed model. Train it again."
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale)


# ----------------------------------------------------------------------------- permutations


class InvConv1x1(Bijection):
    """Invertible 1x1 convolution (Glow), initialised to a random rotation.

    ``lu=True`` parameterises ``W = P L (U + diag(sign * exp(log_s)))`` with P fixed, so that
    log|det W| = sum(log_s) costs nothing; otherwise W is a free matrix (slogdet)."""

    def __init__(self, channels: int, lu: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.linalg.qr(torch.randn(channels, channels, generator=g))[0]
        self.lu = lu
        self._eye_cache: Optional[Tensor] = None
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def _eye(self) -> Tensor:
        """The identity of W's size, device and dtype, made once (a plain attribute, not a buffer:
        not in checkpoints, not averaged by EMA)."""
        eye = self._eye_cache
        if eye is None or eye.device != self.lower.device or eye.dtype != self.lower.dtype:
            eye = self._eye_cache = torch.eye(self.lower.shape[0], dtype=self.lower.dtype,
                                              device=self.lower.device)
        return eye

    def matrix(self) -> Tensor:
        if not self.lu:
            return self.weight
        eye = self._eye()
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _log_abs_det(self) -> Tensor:
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = self.matrix()
        y = F.conv2d(x, w.view(*w.shape, 1, 1))
        return y, (self._log_abs_det() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.matrix())
        return F.conv2d(y, w_inv.view(*w_inv.shape, 1, 1))


class Permutation(Bijection):
    """A fixed channel permutation: ``reverse`` (RealNVP/Glow's simplest) or a seeded ``shuffle``."""

    def __init__(self, channels: int, kind: str = "reverse", seed: int = 0) -> None:
        super().__init__()
        if kind == "reverse":
            perm = torch.arange(channels - 1, -1, -1)
        elif kind == "shuffle":
            perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        else:
            raise ValueError(f"unknown permutation {kind!r}: use 'reverse' or 'shuffle'")
        # Plain lists, not buffers: weight averaging (EMA) averages buffers, and an averaged
        # integer index could be rounded down to the wrong channel.
        self.perm = perm.tolist()
        self.inv_perm = torch.argsort(perm).tolist()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], _zeros(x)

    def inverse(self, y: Tensor) -> Tensor:
        return y[:, self.inv_perm]


# ----------------------------------------------------------------------------- reshaping


class Squeeze(Bijection):
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: each 2x2 block becomes 4 channels (volume preserving)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, _zeros(x)

    def inverse(self, y: Tensor) -> Tensor:
        b, c, h, w = y.shape
        return y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


class Split(Bijection):
    """Factor-out: the last ``channels - channels // 2`` channels leave the flow as latents.

    With ``learned_prior`` (Glow) they are modelled as N(mu(x_keep), sigma(x_keep)^2), which is the
    same as standardising them, ``z = (x_out - mu) / sigma``, against an N(0, 1) base; so this is
    a bijection that keeps the shape, and the model slices ``z`` off afterwards. Without it the
    factored-out channels go to the N(0, 1) base as they are (RealNVP, NICE).
    """

    def __init__(self, channels: int, learned_prior: bool = True, scale_bound: float = 4.0) -> None:
        super().__init__()
        self.keep = channels // 2
        self.scale_bound = scale_bound
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep)) if learned_prior else None

    def _params(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.prior(kept).chunk(2, dim=1)
        return mean, soft_bound(raw, self.scale_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.prior is None:
            return x, _zeros(x)
        kept, out = x[:, : self.keep], x[:, self.keep:]
        mean, log_std = self._params(kept)
        return torch.cat([kept, (out - mean) * torch.exp(-log_std)], 1), -log_std.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.prior is None:
            return y
        kept, z = y[:, : self.keep], y[:, self.keep:]
        mean, log_std = self._params(kept)
        return torch.cat([kept, z * torch.exp(log_std) + mean], 1)


# ----------------------------------------------------------------------------- preprocessing


class Logit(Bijection):
    """Dequantized pixels u in [0, 1) -> ``logit(alpha + (1 - 2 alpha) u)`` (RealNVP's preprocessing),
    with its log-determinant, so that likelihoods stay those of u."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


# ----------------------------------------------------------------------------- composition


class FlowSequence(Bijection):
    """Bijections applied in order; the inverse checks every layer's output is finite and, if
    not, stops naming the layer instead of returning inf/NaN images."""

    def __init__(self, layers: Iterable[Bijection], name: str = "flow") -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.name = name

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = _zeros(x)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            y = layer.inverse(y)
            bad = ~torch.isfinite(y.flatten(1)).all(1)
            if bad.any():
                raise FlowInverseError(
                    f"inverting the flow gave NaN/inf values at {self.name} layer {index} "
                    f"({type(layer).__name__}) for {int(bad.sum())} of {len(bad)} examples: the latents "
                    "are out of the range the model was trained on or the weights have diverged. "
                    "Lower sampler.temperature, or use an earlier checkpoint."
                )
        return y
