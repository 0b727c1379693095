"""VAE family: pixel likelihoods, the bits/dim convention, the IWAE bound, prior sampling, and the
MNIST experiment using its latent code."""

import json
import math

import pytest
import torch

from genlab.config import compatible_samplers
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.models.vae import VAE
from genlab.nets.likelihoods import Categorical256, DiscretizedLogistic
from genlab.samplers.prior import PriorSampler
from genlab.train import train

from conftest import compose_cfg

ALL_VALUES = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)


@pytest.mark.parametrize("dist_cls", [DiscretizedLogistic, Categorical256])
def test_pixel_likelihoods_are_normalised_over_the_256_values(dist_cls):
    torch.manual_seed(0)
    params = torch.randn(1, dist_cls.params_per_channel, 1, 1) * 2
    dist = dist_cls(params.expand(256, -1, -1, -1), channels=1)
    total = dist.log_prob(ALL_VALUES).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_discretized_logistic_puts_its_mass_near_the_mean():
    params = torch.tensor([0.0, -5.0]).view(1, 2, 1, 1)  # mean ~ 0 -> pixel ~127.5, sharp
    probs = DiscretizedLogistic(params.expand(256, -1, -1, -1), 1).log_prob(ALL_VALUES).exp().flatten()
    assert probs.argmax().item() in (127, 128)
    assert probs[0].item() < 1e-6 and probs[255].item() < 1e-6


def test_uniform_categorical_is_exactly_8_bits_per_dim():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    log_p = Categorical256(torch.zeros(5, 3 * 256, 4, 4), channels=3).log_prob(x)
    bits_per_dim = (-log_p.sum((1, 2, 3)) / math.log(2) / (3 * 4 * 4))
    assert torch.allclose(bits_per_dim, torch.full((5,), 8.0), atol=1e-6)


def _vae_with_constant_decoder(prior_posterior: bool) -> VAE:
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=4, channels=(8,), iw_samples=16).eval()
    with torch.no_grad():
        model.from_latent[0].weight.zero_()  # p(x|z) no longer depends on z
        if prior_posterior:
            model.to_posterior.weight.zero_()
            model.to_posterior.bias.zero_()  # q(z|x) = N(0, I) = p(z)
    return model


def test_iwae_bound_is_exact_when_the_posterior_is_the_prior():
    # With p(x|z) = p(x) and q = p(z), every importance weight equals p(x): the bound is tight.
    model = _vae_with_constant_decoder(prior_posterior=True)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    exact = -model.decode(torch.zeros(6, 4)).log_prob(x).flatten(1).sum(1) / math.log(2)
    for k in (1, 7, 64):
        assert torch.allclose(model.nll_bits(x, k=k), exact, rtol=1e-5)


def test_iwae_bound_k1_is_the_elbo_and_tightens_with_k():
    # With p(x|z) = p(x) and any q: E[bound_k=1] = -log2 p(x) + KL(q || p) / ln 2 (closed form),
    # and the bound decreases towards -log2 p(x) as k grows.
    model = _vae_with_constant_decoder(prior_posterior=False)
    with torch.no_grad():
        model.to_posterior.bias.copy_(torch.tensor([0.8, -0.5, 0.3, 0.0, -1.0, 0.5, 0.2, -0.3]))
    x = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    exact = (-model.decode(torch.zeros(1, 4)).log_prob(x).sum() / math.log(2)).item()
    mean, log_var = model.encode(x)
    kl_bits = (0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum() / math.log(2)).item()
    torch.manual_seed(1)
    elbo = model.nll_bits(x.expand(4000, -1, -1, -1), k=1).mean().item()  # 4000 independent draws
    assert elbo == pytest.approx(exact + kl_bits, abs=0.05 * kl_bits)
    bounds = [model.nll_bits(x.expand(200, -1, -1, -1), k=k).mean().item() for k in (1, 16, 256)]
    assert bounds[0] > bounds[1] > bounds[2] > exact


def test_cvae_needs_labels_and_a_labelled_dataset():
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        VAE((1, 8, 8), num_classes=0, conditional=True)
    model = VAE((1, 8, 8), num_classes=10, conditional=True, channels=(8,))
    with pytest.raises(ValueError, match="class labels"):
        model.encode(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 20)])
def test_prior_sampler_returns_8bit_images_of_the_data_shape(shape):
    model = VAE(shape, num_classes=10, conditional=True, channels=(8, 16))
    images = PriorSampler().sample(model, 5)
    assert images.dtype == torch.uint8 and images.shape == (5, *shape)
    assert PriorSampler(pixels="sample").sample(model, 3).shape == (3, *shape)


def test_temperature_zero_decodes_the_prior_mean_and_classes_change_samples():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), num_classes=10, conditional=True, channels=(8,)).eval()
    sampler = PriorSampler(temperature=0.0)
    same_class = sampler.sample(model, 4, labels=torch.full((4,), 3))
    assert (same_class == same_class[0]).all()
    per_class = sampler.sample(model, 10, labels=torch.arange(10))
    assert len({tuple(img.flatten().tolist()) for img in per_class}) > 1
    sampler.classes = [2, 5]
    assert sampler.labels_for(model, 5).tolist() == [2, 5, 2, 5, 2]
    sampler.classes = [11]
    with pytest.raises(ConfigError, match="sampler.classes"):
        sampler.labels_for(model, 2)


def test_a_sampler_refuses_other_families_and_names_those_that_fit():
    class Implicit(GenerativeModel):
        family = "vae_free_family"

    assert compatible_samplers("vae") == ["prior"]
    with pytest.raises(ConfigError, match=r"serves the families \['vae'\].*vae_free_family"):
        PriorSampler().check(Implicit((1, 8, 8)), compatible_samplers("vae_free_family"))


@pytest.mark.parametrize("dist_cls", [DiscretizedLogistic, Categorical256])
def test_pixel_likelihoods_stay_float32_under_bf16_autocast(dist_cls):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, dist_cls.params_per_channel, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = conv(torch.randn(1, 1, 1, 1)).expand(256, -1, -1, -1)
        assert params.dtype == torch.bfloat16
        log_p = dist_cls(params, channels=1).log_prob(ALL_VALUES)
    assert log_p.dtype == torch.float32
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_the_logistic_can_make_an_edge_value_nearly_certain_at_any_scale():
    # A mostly black pixel needs P(0) near 1; with the mean squashed into (-1, 1) that took a
    # tiny scale and a saturated (gradient-free) tanh, and at scale 0.1 P(0) stayed below 0.51.
    for scale in (0.1, 1.0):
        params = torch.tensor([-1.0 - 10 * scale, math.log(scale)]).view(1, 2, 1, 1)
        black = DiscretizedLogistic(params, 1).log_prob(torch.zeros(1, 1, 1, 1, dtype=torch.uint8))
        assert black.exp().item() > 0.9999


@pytest.mark.slow
def test_the_mnist_vae_uses_its_latent_code(mnist_root, tmp_path):
    # vae_mnist, one short epoch on real MNIST. Measured (bench/vae.md): with a tanh-bounded
    # logistic mean the decoder ignored z from step ~40 on (test KL 0.00001 bits/dim, ELBO 2.64);
    # with the unbounded mean, KL 0.016 and ELBO 2.08 after the same 60 steps.
    cfg = compose_cfg(overrides=[
        "experiment=vae_mnist", f"dataset.root={mnist_root}", "dataset.pool=test", "dataset.download=false",
        "trainer.max_epochs=1", "trainer.limit_train_batches=60", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "trainer.check_val_every_n_epoch=1", "callbacks.bpd=null",
        "callbacks.fid=null", "callbacks.samples=null", "logger=none", "objective=val/elbo_bpd"],
        output_dir=tmp_path)
    train(cfg)
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert final["test/kl_bpd"] > 0.005, final  # > 2.7 nats per image
    assert final["test/elbo_bpd"] < 2.4, final
