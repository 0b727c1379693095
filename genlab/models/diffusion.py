"""Denoising diffusion probabilistic models (Ho et al., 2020): ``model=ddpm``.

The forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) adds noise over T
steps; a UNet eps_theta(x_t, t) is trained with L_simple (Algorithm 1) to predict the noise
(or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 with ``prediction=v``). Samplers
(``genlab/samplers/ddpm.py``, ``ddim.py``) use the primitives below: the schedule,
``denoise`` (eps and x_0 predictions, with classifier-free guidance) and ``posterior``.

Timesteps are 0-based in code: index i is the paper's t = i + 1, so ``betas[0]`` is beta_1 and
``alphas_bar_prev[i]`` is abar_{t-1} (1 at the first step).

``nll_bits`` is the variational bound L_T + sum_{t=2}^T L_{t-1} + L_0 on the discrete 8-bit
image (a discretized Gaussian decoder at t = 1), in bits; with ``bound_timesteps`` = k < T the
sum over the T terms is estimated without bias from k of them. Almost all of the variance of such
an estimate comes from the first few terms (the decoder term L_0 and L_1 are far larger than the
rest), so the first ``bound_exact_terms`` are always evaluated, each once, and only the remaining
k - exact draws estimate the rest, stratified (or uniform). With T=1000, k=100 and 10 exact terms,
one digit's estimate has a standard deviation ~20x smaller than with 100 plain strata.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import require_fraction, require_positive
from genlab.errors import ConfigError
from genlab.models.base import LOG2, GenerativeModel
from genlab.nets.likelihoods import to_unit_range
from genlab.nets.unet import MIN_GROUP_CHANNELS, UNet

log = logging.getLogger(__name__)

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
VARIANCES = ("beta", "posterior")
BOUND_ESTIMATORS = ("stratified", "uniform")


def beta_schedule(name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """beta_1..beta_T (float64): ``linear`` (Ho et al.) or ``cosine`` (Nichol & Dhariwal, 2021)."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_bar = f / f[0]
        return (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(max=0.999)
    raise ConfigError(f"model.schedule={name!r} is not known; use one of {list(SCHEDULES)}")


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log P(pixel = x) of a Gaussian integrated over the 8-bit bin of x (x, mean in [-1, 1]);
    the first and last bins extend to -inf and +inf, so the 256 masses sum to 1."""
    x, mean, std = x.double(), mean.double(), std.double()
    upper = (x + 1 / 255 - mean) / std
    lower = (x - 1 / 255 - mean) / std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    # log(Phi(upper) - Phi(lower)) without cancellation: via the side where the bin is smaller
    mid = torch.where(
        lower > 0,
        log_survival_lower + torch.log1p(-torch.exp(torch.special.log_ndtr(-upper) - log_survival_lower).clamp(max=1 - 1e-12)),
        log_cdf_upper + torch.log1p(-torch.exp(torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=1 - 1e-12)),
    )
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, mid)).float()


class LinearWarmup:
    """lr factor for ``LambdaLR``: linear warm-up over ``steps`` optimizer steps, then 1 (Ho et al.)."""

    def __init__(self, steps: int) -> None:
        self.steps = max(int(steps), 1)

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] broadcast over the image dimensions of ``like`` (in its dtype and device)."""
    return values.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *[1] * (like.dim() - 1))


class DDPM(GenerativeModel):
    family = "diffusion"
    likelihood = "bound"
    step_metrics = ("loss",)

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        timesteps: int = 1000,
        schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: str = "eps",
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        scale_shift_norm: bool = True,
        cond_drop_prob: float = 0.1,
        variance: str = "posterior",
        bound_timesteps: Optional[int] = None,
        bound_estimator: str = "stratified",
        bound_exact_terms: int = 10,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        super().__init__(tuple(data_shape), num_classes, optimizer, scheduler, conditional, vocab_size)
        require_positive("model", channels=channels, channel_mult=channel_mult,
                         num_res_blocks=num_res_blocks)
        if attention_resolutions:  # empty = no attention
            require_positive("model", attention_resolutions=attention_resolutions)
        require_fraction("model", dropout=dropout)
        if not isinstance(timesteps, int) or timesteps < 2:
            raise ConfigError(f"model.timesteps={timesteps!r} must be an integer >= 2")
        for key, value, allowed in (
            ("prediction", prediction, PREDICTIONS),
            ("variance", variance, VARIANCES),
            ("bound_estimator", bound_estimator, BOUND_ESTIMATORS),
        ):
            if value not in allowed:
                raise ConfigError(f"model.{key}={value!r} is not known; use one of {list(allowed)}")
        if bound_timesteps is not None:  # null = all T
            require_positive("model", bound_timesteps=bound_timesteps)
        if not isinstance(bound_exact_terms, int) or bound_exact_terms < 0:
            raise ConfigError(f"model.bound_exact_terms={bound_exact_terms!r} must be an integer >= 0")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ConfigError(f"model.cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if schedule == "linear" and not 0 < beta_start <= beta_end < 1:
            raise ConfigError(
                f"model.beta_start={beta_start} and model.beta_end={beta_end} must satisfy 0 < start <= end < 1"
            )
        if not scale_shift_norm and int(channels) < MIN_GROUP_CHANNELS:
            raise ConfigError(
                f"model.scale_shift_norm=false adds the time/class embedding before a GroupNorm, which "
                f"removes it unless each group holds several channels: model.channels={channels} is too "
                f"narrow; use model.channels>={MIN_GROUP_CHANNELS} or model.scale_shift_norm=true"
            )
        if int(self.data_shape[1]) < 2 ** (len(channel_mult) - 1):
            raise ConfigError(
                f"model.channel_mult={list(channel_mult)} halves the {self.data_shape[1]}px image "
                f"{len(channel_mult) - 1} times; use fewer levels for this image size"
            )

        self.timesteps = int(timesteps)
        self.prediction = prediction
        self.variance = variance
        self.cond_drop_prob = float(cond_drop_prob)
        self.bound_timesteps = None if bound_timesteps is None else int(bound_timesteps)
        self.bound_estimator = bound_estimator
        self.bound_exact_terms = bound_exact_terms
        self._said_bound = False

        # The schedule, float64, as plain tensors (not buffers: they are constants, not weights
        # to average or checkpoint).
        betas = beta_schedule(schedule, self.timesteps, beta_start, beta_end)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_bar = torch.cumprod(self.alphas, 0)
        self.alphas_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_bar[:-1]])
        # posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, posterior_var)
        self.posterior_var = betas * (1 - self.alphas_bar_prev) / (1 - self.alphas_bar)
        self.posterior_coef_x0 = betas * self.alphas_bar_prev.sqrt() / (1 - self.alphas_bar)
        self.posterior_coef_xt = (1 - self.alphas_bar_prev) * self.alphas.sqrt() / (1 - self.alphas_bar)

        c, h, w = self.data_shape
        self.net = UNet(
            c, h, channels, channel_mult, num_res_blocks, attention_resolutions, dropout,
            num_classes=num_classes if self.conditional else 0, scale_shift_norm=scale_shift_norm,
        )

    # ----- the forward process --------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) in closed form: sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        return _at(self.alphas_bar.sqrt(), t, x0) * x0 + _at((1 - self.alphas_bar).sqrt(), t, x0) * noise

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (variance broadcast like x_t)."""
        mean = _at(self.posterior_coef_x0, t, xt) * x0 + _at(self.posterior_coef_xt, t, xt) * xt
        return mean, _at(self.posterior_var, t, xt).expand_as(xt)

    def reverse_variance(self, t: Tensor, like: Tensor, kind: Optional[str] = None) -> Tensor:
        """sigma_t^2 of p_theta(x_{t-1} | x_t): beta_t or the posterior variance. At t = 1 both
        use the posterior variance of t = 2 (it is 0 at t = 1), as Ho et al.'s code does."""
        values = self.betas if (kind or self.variance) == "beta" else self.posterior_var
        values = torch.cat([self.posterior_var[1:2], values[1:]])
        return _at(values, t, like)

    # ----- the network's predictions --------------------------------------------------------
    def _labels(self, y: Optional[Tensor], n: int) -> Optional[Tensor]:
        if not self.conditional:
            return None
        if y is None:  # the "no class" token: the unconditional model CFG trains alongside
            return torch.full((n,), self.num_classes, device=self.device, dtype=torch.long)
        if (y < 0).any():
            raise ValueError("a conditional DDPM needs class labels y in 0..num_classes-1")
        return y.long()

    def denoise(self, xt: Tensor, t: Tensor, y: Optional[Tensor] = None, guidance: float = 0.0,
                clip: bool = False) -> tuple[Tensor, Tensor]:
        """(eps, x_0) predicted from x_t at the timestep indices t [B]. ``guidance`` w > 0 on a
        conditional model mixes (1 + w) * conditional - w * unconditional (Ho & Salimans, 2022).
        ``clip`` clamps x_0 to [-1, 1] and recomputes eps to match it."""
        labels = self._labels(y, xt.shape[0])
        if guidance and labels is not None:
            null = torch.full_like(labels, self.num_classes)
            out_c, out_u = self.net(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([labels, null])).float().chunk(2)
            out = (1 + guidance) * out_c - guidance * out_u
        else:
            out = self.net(xt, t, labels).float()
        xt = xt.float()
        sqrt_ab, sqrt_1m_ab = _at(self.alphas_bar.sqrt(), t, xt), _at((1 - self.alphas_bar).sqrt(), t, xt)
        if self.prediction == "eps":
            eps = out
            x0 = (xt - sqrt_1m_ab * eps) / sqrt_ab
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x_0
            x0 = sqrt_ab * xt - sqrt_1m_ab * out
            eps = sqrt_1m_ab * xt + sqrt_ab * out
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (xt - sqrt_ab * x0) / sqrt_1m_ab
        return eps, x0

    # ----- training: L_simple (Algorithm 1) -------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor, drop_labels: bool) -> Tensor:
        x0 = to_unit_range(x)
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        labels = self._labels(y, x0.shape[0])
        if labels is not None and drop_labels and self.cond_drop_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.cond_drop_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        if self.prediction == "eps":
            target = noise
        else:
            target = _at(self.alphas_bar.sqrt(), t, x0) * noise - _at((1 - self.alphas_bar).sqrt(), t, x0) * x0
        return F.mse_loss(self.net(xt, t, labels).float(), target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self._loss(x, y, drop_labels=True)
        self.check_finite(loss=loss)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        loss = self._loss(x, y, drop_labels=False)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    # ----- the variational bound ------------------------------------------------------------
    def prior_bits(self, x: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in bits."""
        x0 = to_unit_range(x).double()
        last = self.alphas_bar[-1].to(x0.device)
        kl = normal_kl(last.sqrt() * x0, (1 - last).expand_as(x0), torch.zeros_like(x0), torch.ones_like(x0))
        return kl.flatten(1).sum(1).float() / LOG2

    def term_bits(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """One term of the bound per example, in bits, at timestep indices t [B]: the decoder
        term L_0 = -log p(x_0 | x_1) where t = 0, else L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))."""
        x0 = to_unit_range(x)
        xt = self.q_sample(x0, t, torch.randn_like(x0))
        _, x0_pred = self.denoise(xt, t, y)
        mean_q, var_q = self.posterior(x0, xt, t)
        mean_p, _ = self.posterior(x0_pred, xt, t)
        var_p = self.reverse_variance(t, xt).expand_as(xt)
        kl = normal_kl(mean_q.double(), var_q.double().clamp(min=1e-30), mean_p.double(), var_p.double())
        decoder = -discretized_gaussian_log_prob(x0, mean_p, var_p.sqrt())
        first = (t == 0).view(-1, *[1] * (x0.dim() - 1))
        return torch.where(first, decoder.double(), kl).flatten(1).sum(1).float() / LOG2

    def _head_size(self, k: int) -> int:
        """How many of the first terms the k-term estimate evaluates exactly (at least one draw is
        left for the rest while k < T)."""
        return self.timesteps if k >= self.timesteps else min(self.bound_exact_terms, k - 1)

    def _bound_plan(self, b: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Timestep indices [k, B] and their weights [k, B] whose weighted sum of terms is an
        unbiased estimate of the sum over all T terms: the first ``_head_size(k)`` terms once
        each (weight 1), then k - head draws over the remaining terms."""
        T, head = self.timesteps, self._head_size(k)
        exact_t = torch.arange(head, device=device)[:, None].expand(head, b)
        exact_w = torch.ones(head, b, device=device)
        if head >= T:
            return exact_t, exact_w
        rest, draws = T - head, k - head
        if self.bound_estimator == "uniform":  # draws with replacement, each weighted rest / draws
            t = head + torch.randint(0, rest, (draws, b), device=device)
            w = torch.full((draws, b), rest / draws, device=device)
        else:  # stratified: contiguous strata covering the rest, one uniform draw in each, weighted by its size
            edges = head + torch.linspace(0, rest, draws + 1, device=device).round().long()
            sizes = (edges[1:] - edges[:-1])[:, None].float()
            t = edges[:-1, None] + (torch.rand(draws, b, device=device) * sizes).long()
            w = sizes.expand(draws, b)
        return torch.cat([exact_t, t]), torch.cat([exact_w, w])

    def describe_bound(self, k: Optional[int] = None) -> str:
        """The estimator in words, for the log."""
        k = min(k or self.bound_timesteps or self.timesteps, self.timesteps)
        T, head = self.timesteps, self._head_size(k)
        if head >= T:
            return f"all T={T} terms"
        exact = f"terms t=1..{head} exact, " if head else ""
        return (f"{exact}an unbiased {self.bound_estimator} estimate of the other {T - head} of the "
                f"T={T} terms from {k - head} draws per example")

    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None, k: Optional[int] = None) -> Tensor:
        """Upper bound on -log2 p(x) of the 8-bit x: L_T + sum of the T terms (all of them, or an
        unbiased estimate from k of them: ``model.bound_timesteps``)."""
        k = min(k or self.bound_timesteps or self.timesteps, self.timesteps)
        if not self._said_bound:
            log.info("diffusion bits/dim: variational bound (L_T + L_1..L_{T-1} + discretized L_0), %s",
                     self.describe_bound(k))
            self._said_bound = True
        t_plan, weights = self._bound_plan(x.shape[0], k, x.device)
        total = self.prior_bits(x)
        for t, w in zip(t_plan, weights):
            total = total + w * self.term_bits(x, t, y)
        return total
