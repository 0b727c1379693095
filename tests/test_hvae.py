"""Hierarchical VAE: each group's KL against the closed form, the importance-weighted bound
falls with k, KL warm-up, sampling at a temperature."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genlab.errors import ConfigError
from genlab.models.hvae import HierarchicalVAE
from genlab.samplers.prior import PriorSampler


def tiny(**kw) -> HierarchicalVAE:
    torch.manual_seed(0)
    model = HierarchicalVAE((1, 6, 6), groups=3, latent_channels=2, channels=8, **kw)
    with torch.no_grad():  # the prior and posterior start as N(0, 1) = q; make them differ
        for layer in (*model.prior, *model.posterior):
            layer.weight.normal_(0, 0.05)
            layer.bias.normal_(0, 0.05)
    return model.eval()


def images(n: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8)


def test_each_groups_kl_is_the_closed_form_of_its_two_gaussians():
    model, x = tiny(), images()
    _, stats = model.top_down(x.shape[0], model.bottom_up(x))
    kls = model.group_kls(stats)
    assert len(kls) == 3
    for kl, s in zip(kls, stats):
        q = Normal(s["mean_q"], (0.5 * s["log_var_q"]).exp())
        p = Normal(s["mean_p"], (0.5 * s["log_var_p"]).exp())
        assert kl.shape == (8,)
        torch.testing.assert_close(kl, kl_divergence(q, p).flatten(1).sum(1).to(kl.dtype))
        assert (kl > 0).all()
    # the groups below the top see z_<l: their prior is not the fixed one of the top group
    assert not torch.allclose(stats[1]["mean_p"][0], stats[1]["mean_p"][1])


def test_the_importance_weighted_bound_does_not_increase_with_k():
    model, x = tiny(), images(16)
    torch.manual_seed(2)
    bounds = [model.nll_bits(x, k=k).mean().item() for k in (1, 4, 32)]
    assert bounds[0] > bounds[1] > bounds[2]


def test_kl_weight_warms_up_linearly():
    model = tiny(kl_warmup_steps=100)
    assert model.kl_weight() == pytest.approx(0.01)  # step 0 of a fresh run
    assert tiny(kl_warmup_steps=0).kl_weight() == 1.0


def test_samples_at_temperature_zero_are_the_prior_means_and_have_the_data_shape():
    model = tiny()
    cold = PriorSampler(temperature=0.0).sample(model.float(), 4)
    assert cold.shape == (4, 1, 6, 6) and cold.dtype == torch.uint8
    assert (cold == cold[0]).all()  # every sample is the same chain of prior means
    warm = PriorSampler(temperature=1.0).sample(model, 4)
    assert not (warm == warm[0]).all()


def test_a_conditional_hvae_is_refused_with_the_key():
    with pytest.raises(ConfigError, match="model.conditional=false"):
        HierarchicalVAE((1, 8, 8), num_classes=10, conditional=True)
