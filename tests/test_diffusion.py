"""Diffusion family: the forward process, the posterior, the samplers and the bound."""

import logging
import math

import pytest
import torch

from genlab.config import compatible_samplers
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.models.diffusion import DDPM, beta_schedule, discretized_gaussian_log_prob
from genlab.nets.unet import UNet
from genlab.samplers.ddim import DDIMSampler
from genlab.samplers.ddpm import DDPMSampler

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.0)


def tiny_ddpm(timesteps: int = 20, shape=(1, 8, 8), **kwargs) -> DDPM:
    torch.manual_seed(0)
    return DDPM(shape, timesteps=timesteps, **{**TINY, **kwargs}).eval()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_closed_form_marginal_matches_composing_single_steps(schedule):
    model = DDPM((1, 8, 8), timesteps=300, schedule=schedule, **TINY)
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(())  # x_0 itself: a point mass
    for i in range(model.timesteps):
        # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t): push the Gaussian through it
        beta = model.betas[i]
        mean, var = (1 - beta).sqrt() * mean, (1 - beta) * var + beta
        assert torch.allclose(mean, model.alphas_bar[i].sqrt() * x0, atol=1e-12)
        assert var.item() == pytest.approx(1 - model.alphas_bar[i].item(), abs=1e-12)
    # q_sample is that closed form: mean and variance of many draws at t = 1, T/2 and T
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.6)
    for i in (0, 150, 299):
        xt = model.q_sample(x0, torch.full((20000,), i), torch.randn_like(x0))
        ab = model.alphas_bar[i].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.6, abs=4 * math.sqrt((1 - ab) / 20000) + 1e-6)
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.05)
    assert (model.betas > 0).all() and (model.betas < 1).all()


def test_schedules_are_the_published_ones():
    linear = beta_schedule("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    cosine = beta_schedule("cosine", 1000)
    abar = torch.cumprod(1 - cosine, 0)
    # Nichol & Dhariwal: abar_t = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, s = 0.008
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    with pytest.raises(ConfigError, match="model.schedule"):
        beta_schedule("quadratic", 10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_rule_at_the_right_timestep(schedule):
    model = DDPM((1, 8, 8), timesteps=50, schedule=schedule, **TINY)
    torch.manual_seed(0)
    x0, xt = torch.randn(50, 1, 2, 2, dtype=torch.float64), torch.randn(50, 1, 2, 2, dtype=torch.float64)
    t = torch.arange(50)
    mean, var = model.posterior(x0, xt, t)
    for i in range(1, 50):  # paper t = i + 1 >= 2
        # q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}); q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)
        ab_prev = torch.cumprod(1 - model.betas, 0)[i - 1]
        alpha, beta = 1 - model.betas[i], model.betas[i]
        precision = 1 / (1 - ab_prev) + alpha / beta
        expected_mean = (ab_prev.sqrt() * x0[i] / (1 - ab_prev) + alpha.sqrt() * xt[i] / beta) / precision
        assert torch.allclose(var[i], 1 / precision, rtol=1e-10)
        assert torch.allclose(mean[i], expected_mean, rtol=1e-9, atol=1e-12)
    # at t = 1 (index 0) x_{t-1} is x_0 itself: zero variance, mean x_0
    assert var[0].abs().max().item() == 0.0
    assert torch.allclose(mean[0], x0[0], atol=1e-12)


def test_ancestral_step_is_algorithm_2():
    model = tiny_ddpm(timesteps=20)
    torch.manual_seed(1)
    x, z = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    for i, variance in ((13, "beta"), (5, "posterior"), (1, "beta")):
        sampler = DDPMSampler(variance=variance, clip_x0=False)
        got = sampler.step(model, x, i, noise=z)
        eps, _ = model.denoise(x, torch.full((4,), i))
        alpha, beta, abar = (float(v[i]) for v in (model.alphas, model.betas, model.alphas_bar))
        sigma2 = beta if variance == "beta" else float(model.posterior_var[i])
        expected = (x - (1 - alpha) / math.sqrt(1 - abar) * eps) / math.sqrt(alpha) + math.sqrt(sigma2) * z
        assert torch.allclose(got, expected, atol=1e-5)


def test_ddim_eta0_is_deterministic_and_eta1_all_steps_is_ancestral():
    model = tiny_ddpm(timesteps=20)
    noise = torch.randn(6, 1, 8, 8)
    ddim = DDIMSampler(steps=8, eta=0.0)
    torch.manual_seed(1)
    first = ddim.sample(model, 6, noise=noise)
    torch.manual_seed(2)  # different global RNG state: eta = 0 draws nothing
    assert torch.equal(ddim.sample(model, 6, noise=noise), first)
    assert not torch.equal(ddim.sample(model, 6), first)
    assert DDIMSampler(steps=8).timesteps(model)[0] == 19 and DDIMSampler(steps=8).timesteps(model)[-1] == 0
    assert DDIMSampler(steps=20).timesteps(model) == list(range(19, -1, -1))

    # eta = 1 over all T steps: every update equals the ancestral one with the posterior variance
    x, z = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    ddim1, ddpm = DDIMSampler(steps=20, eta=1.0, clip_x0=False), DDPMSampler(variance="posterior", clip_x0=False)
    for i in (19, 10, 1, 0):
        assert torch.allclose(ddim1.step(model, x, i, i - 1, noise=z), ddpm.step(model, x, i, noise=z), atol=1e-5)
    # ... and so are whole runs from the same seed (both samplers draw the same noise in the same order)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        a = DDIMSampler(steps=20, eta=1.0).sample(model, 5)
        torch.manual_seed(3)
        b = DDPMSampler(variance="posterior").sample(model, 5)
    assert (a.int() - b.int()).abs().max().item() <= 1


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_perfect_network_recovers_x0_and_the_noise(prediction):
    model = tiny_ddpm(timesteps=100, prediction=prediction)
    torch.manual_seed(0)
    x0, noise, t = torch.rand(5, 1, 8, 8) * 2 - 1, torch.randn(5, 1, 8, 8), torch.tensor([0, 10, 50, 98, 99])
    xt = model.q_sample(x0, t, noise)
    ab = model.alphas_bar[t].float().view(-1, 1, 1, 1)
    target = noise if prediction == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    model.net.forward = lambda *args: target  # what the training loss regresses towards
    eps, x0_pred = model.denoise(xt, t)
    assert torch.allclose(eps, noise, atol=1e-4) and torch.allclose(x0_pred, x0, atol=1e-3)


def test_classifier_free_guidance_mixes_conditional_and_unconditional_predictions():
    model = tiny_ddpm(timesteps=10, num_classes=10, conditional=True)
    torch.manual_seed(0)
    with torch.no_grad():
        model.net.class_emb.weight.normal_()  # so that the labels matter
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 7), torch.tensor([1, 2, 3, 4])
    eps_c, _ = model.denoise(x, t, y)
    eps_u, _ = model.denoise(x, t, None)  # the "no class" token
    eps_g, _ = model.denoise(x, t, y, guidance=3.0)
    assert not torch.allclose(eps_c, eps_u)
    assert torch.allclose(eps_g, 4.0 * eps_c - 3.0 * eps_u, atol=1e-5)
    with pytest.raises(ValueError, match="class labels"):
        model.denoise(x, t, torch.full((4,), -1))


def test_samplers_return_8bit_images_and_refuse_other_families():
    model = tiny_ddpm(timesteps=10, shape=(3, 12, 12))
    for sampler in (DDPMSampler(), DDIMSampler(steps=4)):
        images = sampler.sample(model, 3)
        assert images.dtype == torch.uint8 and images.shape == (3, 3, 12, 12)

    class Other(GenerativeModel):
        family = "vae"

    assert compatible_samplers("diffusion") == ["ddim", "ddpm", "dpm_solver"]
    with pytest.raises(ConfigError, match=r"serves the families \['diffusion'\].*sampler=prior"):
        DDIMSampler().check(Other((1, 8, 8)), compatible_samplers("vae"))
    with pytest.raises(ConfigError, match="sampler.steps=30 is more than the model's T=10"):
        DDIMSampler(steps=30).sample(model, 1)


def test_bad_config_values_are_refused_naming_the_key():
    for kwargs, key in (({"schedule": "cosin"}, "model.schedule"), ({"prediction": "x0"}, "model.prediction"),
                        ({"variance": "large"}, "model.variance"), ({"bound_timesteps": 0}, "model.bound_timesteps"),
                        ({"timesteps": 1}, "model.timesteps"), ({"conditional": True}, "dataset.num_classes"),
                        ({"channel_mult": (1, 2, 2, 2, 2)}, "model.channel_mult")):
        with pytest.raises(ConfigError, match=key):
            DDPM((1, 8, 8), **{**TINY, **kwargs})
    for make, key in ((lambda: DDIMSampler(steps=0), "sampler.steps"), (lambda: DDIMSampler(eta=-1), "sampler.eta"),
                      (lambda: DDPMSampler(variance="x"), "sampler.variance"),
                      (lambda: DDPMSampler(guidance_scale=-1), "sampler.guidance_scale")):
        with pytest.raises(ConfigError, match=key):
            make()


def test_discretized_gaussian_is_normalised_over_the_256_values():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in ((0.3, 0.01), (-0.99, 0.002), (1.0, 0.5), (0.0, 1e-4)):
        p = discretized_gaussian_log_prob(x, torch.full_like(x, mean), torch.full_like(x, std)).double().exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_the_log_says_which_bound_was_computed(caplog):
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with caplog.at_level(logging.INFO, logger="genlab.models.diffusion"):
        tiny_ddpm(timesteps=6, bound_timesteps=None).nll_bits(x)
        tiny_ddpm(timesteps=6, bound_timesteps=2, bound_estimator="uniform").nll_bits(x)
    messages = [r.message for r in caplog.records]
    assert any("variational bound" in m and "all T=6 terms" in m for m in messages)
    assert any("terms t=1..1 exact, an unbiased uniform estimate of the other 5 of the T=6 terms from 1 draws"
               in m for m in messages)


class BayesDenoiser(torch.nn.Module):
    """The best possible noise predictor when the data is uniform over ``images``: eps from the
    posterior mean E[x_0 | x_t] (a softmax over the images). A perfectly trained model of a tiny
    dataset, whose bound terms are shaped like a trained model's: a large decoder term, a tail
    near zero."""

    def __init__(self, model: DDPM, images: torch.Tensor) -> None:
        super().__init__()
        self.model, self.images = model, (images.flatten(1).double() / 127.5 - 1)

    def forward(self, xt, t, labels=None):
        ab = self.model.alphas_bar[t].view(-1, 1)
        flat = xt.flatten(1).double()
        d2 = ((flat[:, None, :] - ab.sqrt()[:, None] * self.images[None]) ** 2).sum(-1)
        x0 = torch.softmax(-d2 / (2 * (1 - ab)), 1) @ self.images
        return ((flat - ab.sqrt() * x0) / (1 - ab).sqrt()).view_as(xt).float()


def test_exact_first_terms_keep_the_estimate_unbiased_and_cut_its_spread_over_10x():
    images = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = tiny_ddpm(timesteps=100, shape=(1, 4, 4))
    model.net = BayesDenoiser(model, images)
    x = images[:1].expand(2000, -1, -1, -1)
    torch.manual_seed(0)
    full = model.nll_bits(x, k=100)  # all T terms; its spread is the x_t noise alone
    model.bound_exact_terms = 0  # the previous estimator: 10 plain strata of 10 terms
    torch.manual_seed(1)
    old = model.nll_bits(x, k=10)
    model.bound_exact_terms = 3  # the first 3 terms exact, 7 strata over the other 97
    torch.manual_seed(2)
    new = model.nll_bits(x, k=10)
    for estimate in (old, new):  # both unbiased: within 4 standard errors of the difference
        se = math.sqrt(full.var().item() / len(full) + estimate.var().item() / len(estimate))
        assert estimate.mean().item() == pytest.approx(full.mean().item(), abs=4 * se)
    assert new.std() * 10 < old.std()


def test_subset_bound_estimate_is_unbiased():
    model = tiny_ddpm(timesteps=16, shape=(1, 4, 4))
    x = torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8).expand(1200, -1, -1, -1)
    torch.manual_seed(0)
    full = model.nll_bits(x, k=16)  # all T terms (each still averages over x_t ~ q)
    for estimator, k in (("stratified", 4), ("uniform", 3)):
        model.bound_estimator = estimator
        torch.manual_seed(1)
        subset = model.nll_bits(x, k=k)
        se = math.sqrt(full.var().item() / len(full) + subset.var().item() / len(subset))
        assert subset.mean().item() == pytest.approx(full.mean().item(), abs=4 * se), estimator
        assert subset.var() > full.var()  # it is an estimate, not the sum
    # a biased one (forgetting the T/k weights) is caught by the same check
    model.bound_estimator = "uniform"
    torch.manual_seed(1)
    unweighted = model.prior_bits(x) + (model.nll_bits(x, k=3) - model.prior_bits(x)) * 3 / 16
    assert abs(unweighted.mean().item() - full.mean().item()) > 10 * se


def test_prior_term_is_near_zero_for_the_papers_schedule_and_the_bound_beats_uniform_only_when_trained():
    model = tiny_ddpm(timesteps=1000)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    assert model.prior_bits(x).max().item() / 64 < 1e-4  # abar_T ~ 4e-5: x_T is nearly N(0, I)
    short = tiny_ddpm(timesteps=10)
    assert (short.prior_bits(x) / 64 > 0.05).any()  # 10 steps leave x_0 visible in x_T
    torch.manual_seed(0)
    assert (short.nll_bits(x) / 64 > 8).all()  # an untrained denoiser is worse than uniform


def test_cifar10_config_is_the_papers_35_7m_parameter_unet():
    from conftest import compose_cfg

    cfg = compose_cfg(overrides=["experiment=ddpm_cifar10"])
    m = cfg.model
    assert (m.channels, list(m.channel_mult), m.num_res_blocks, list(m.attention_resolutions), m.dropout) == (
        128, [1, 2, 2, 2], 2, [16], 0.1)
    assert (m.timesteps, m.schedule, cfg.dataset.image_size, m.scale_shift_norm) == (1000, "linear", 32, False)
    net = UNet(3, 32, m.channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions, m.dropout,
               scale_shift_norm=m.scale_shift_norm)
    assert sum(p.numel() for p in net.parameters()) == 35_746_307  # Ho et al.: 35.7M


def test_dpm_solver_follows_the_papers_algorithm_2_on_the_same_model_and_noise():
    import numpy as np

    from genlab.samplers.dpm_solver import DPMSolverSampler

    model = tiny_ddpm(timesteps=100)
    torch.manual_seed(3)
    x_T = torch.randn(4, 1, 8, 8)
    steps = 8
    got = DPMSolverSampler(steps=steps, clip_x0=False).solve(model, x_T.clone())
    # Lu et al. (2022), Algorithm 2 (DPM-Solver++(2M)), written out in the paper's notation on
    # diffusers' "linspace" timesteps, with a first-order last step onto sigma = 0
    ts = np.linspace(0, 99, steps + 1).round()[::-1][:-1].astype(int)
    abar = model.alphas_bar.numpy()
    alpha, sigma = np.sqrt(abar[ts]), np.sqrt(1 - abar[ts])
    lam = np.log(alpha / sigma)

    def x_theta(x, i):
        return model.denoise(x.float(), torch.full((4,), int(ts[i])))[1].double()

    x, m = x_T.double(), []
    for i in range(steps):
        m.append(x_theta(x, i))
        if i == steps - 1:
            x = m[-1]
            break
        h = lam[i + 1] - lam[i]
        if i == 0:
            D = m[-1]
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * m[-1] - 1 / (2 * r) * m[-2]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (np.exp(-h) - 1) * D
    assert torch.allclose(got.double(), x, atol=1e-4)
    assert not torch.allclose(got, DPMSolverSampler(steps=steps, order=1, clip_x0=False).solve(model, x_T), atol=1e-3)


def test_dpm_solver_with_as_many_steps_as_timesteps_evaluates_each_once():
    from genlab.samplers.dpm_solver import DPMSolverSampler

    model = tiny_ddpm(timesteps=10)
    sampler = DPMSolverSampler(steps=10)  # allowed (steps <= T); rounding gave timestep 4 twice
    assert sampler.timesteps(model) == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    torch.manual_seed(0)
    assert torch.isfinite(sampler.solve(model, torch.randn(2, 1, 8, 8))).all()
