"""Flow family: every bijection and whole models are invertible with the autograd log-det,
the 8-bit bits/dim convention, temperature sampling, interpolation and the checks at start."""

import math

import pytest
import torch

from genlab.config import compatible_samplers
from genlab.errors import CheckpointError, ConfigError
from genlab.models.flow import Flow
from genlab.models.vae import VAE
from genlab.nets.flows import (
    ActNorm,
    Coupling,
    FlowInverseError,
    FlowSequence,
    InvConv1x1,
    Logit,
    Permutation,
    Scaling,
    Split,
    Squeeze,
)
from genlab.samplers.temperature import TemperatureSampler
from genlab.utils import seeded

NICE = dict(coupling="additive", masks="channel", permutation="reverse", actnorm=False, scaling=True,
            learned_prior=False)
REALNVP = dict(coupling="affine", masks="checkerboard_channel", permutation="none", actnorm=False,
               learned_prior=False, net="resnet", blocks=1)
GLOW = dict(coupling="affine", masks="channel", permutation="invconv_lu", actnorm=True, learned_prior=True)
GLOW_PLAIN = dict(GLOW, permutation="invconv", net="resnet", blocks=1)
FAMILY_CONFIGS = {"nice": NICE, "realnvp": REALNVP, "glow": GLOW, "glow_plain_conv": GLOW_PLAIN}


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter away from its identity-like initialisation (zero-init couplings)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _check_bijection(forward, inverse, x: torch.Tensor) -> None:
    """inverse(forward(x)) == x and forward's log-det == log|det J| of the autograd Jacobian."""
    y, logdet = forward(x)
    flat = lambda t: torch.cat([z.flatten(1) for z in t], 1) if isinstance(t, list) else t.flatten(1)  # noqa: E731
    assert torch.allclose(inverse(y), x, atol=1e-5, rtol=0)
    assert logdet.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flat(forward(v.unsqueeze(0))[0])[0], x[i])
        jac = jac.reshape(jac.shape[0], -1)
        assert jac.shape[0] == jac.shape[1] == x[i].numel()
        expected = torch.linalg.slogdet(jac)[1]
        assert logdet[i].item() == pytest.approx(expected.item(), abs=1e-6, rel=1e-8)


BIJECTIONS = {  # name: (constructor, input channels)
    "additive_channel": (lambda: Coupling(4, "channel", 0, affine=False, hidden=8), 4),
    "additive_checkerboard": (lambda: Coupling(3, "checkerboard", 1, affine=False, hidden=8), 3),
    "affine_channel_odd": (lambda: Coupling(5, "channel", 1, hidden=8, net="resnet", blocks=1), 5),
    "affine_channel": (lambda: Coupling(4, "channel", 0, hidden=8), 4),
    "affine_checkerboard_even": (lambda: Coupling(2, "checkerboard", 0, hidden=8), 2),
    "affine_checkerboard_odd": (lambda: Coupling(1, "checkerboard", 1, hidden=8, scale_bound=0.5), 1),
    "actnorm": (lambda: ActNorm(4), 4),
    "scaling": (lambda: Scaling((4, 4, 4)), 4),
    "invconv_plain": (lambda: InvConv1x1(4, lu=False, seed=3), 4),
    "invconv_lu": (lambda: InvConv1x1(4, lu=True, seed=3), 4),
    "permutation_reverse": (lambda: Permutation(4, "reverse"), 4),
    "permutation_shuffle": (lambda: Permutation(5, "shuffle", seed=2), 5),
    "squeeze": (lambda: Squeeze(), 3),
    "split_learned_prior": (lambda: Split(4, learned_prior=True), 4),
    "split_plain": (lambda: Split(5, learned_prior=False), 5),
    "sequence": (lambda: FlowSequence([ActNorm(2), Squeeze(), InvConv1x1(8), Coupling(8, "channel", 1, hidden=8)]),
                 2),
}


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_every_bijection_inverts_and_has_the_autograd_log_det(name):
    build, channels = BIJECTIONS[name]
    layer = build().double()
    torch.manual_seed(0)
    x = torch.randn(3, channels, 4, 4, dtype=torch.float64) * 1.5 + 0.3
    layer.train()
    layer(x)  # actnorm's data-dependent init happens here
    _randomise(layer)
    layer.eval()
    _check_bijection(layer, layer.inverse, x)


@pytest.mark.parametrize("alpha", [0.05, 0.0])
def test_logit_preprocessing_inverts_and_has_the_autograd_log_det(alpha):
    layer = Logit(alpha)
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64) * 0.98 + 0.01
    _check_bijection(layer, layer.inverse, x)


def test_actnorm_data_init_standardises_the_first_training_batch_only():
    layer = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    y, _ = layer(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    before = layer.log_scale.clone()
    layer(x * 10)
    assert torch.equal(layer.log_scale, before) and bool(layer.initialized)
    fresh = ActNorm(3).eval()
    fresh(x)  # evaluating an untrained model does not initialise it
    assert not bool(fresh.initialized) and torch.equal(fresh.log_scale, torch.zeros_like(fresh.log_scale))


def test_actnorm_loaded_from_a_checkpoint_keeps_its_state_and_reads_the_buffer_once(tmp_path):
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    trained = ActNorm(3)
    trained(x)  # data init
    with torch.no_grad():
        trained.loc.add_(1.0)  # as if trained on: no longer the statistics of any batch
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    resumed = ActNorm(3)  # a new process: not initialised until the checkpoint says so
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    resumed(x * 3 + 1)  # the first training batch after a resume must not initialise again
    assert torch.equal(resumed.loc, trained.loc) and torch.equal(resumed.log_scale, trained.log_scale)
    # Loading an uninitialised state into an initialised layer makes the next batch initialise it.
    resumed.load_state_dict(ActNorm(3).state_dict())
    resumed(x)
    assert bool(resumed.initialized) and torch.allclose(-resumed.loc.flatten(), x.mean((0, 2, 3)), atol=1e-4)
    # Once initialised, a training forward makes no host read of the buffer (no device sync on a GPU).
    reads = []
    real_bool = torch.Tensor.__bool__
    torch.Tensor.__bool__ = lambda t: reads.append(t) or real_bool(t)
    try:
        resumed(x)
    finally:
        torch.Tensor.__bool__ = real_bool
    assert reads == []


def test_flow_resumed_by_lightning_does_not_initialise_actnorm_again(tmp_path):
    import pytorch_lightning as pl

    from genlab.data import DigitsDataModule

    def fit(model, steps, ckpt=None):
        trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt)
        return trainer

    torch.manual_seed(0)
    model = Flow((1, 8, 8), levels=2, steps=1, hidden=4, **GLOW)
    trainer = fit(model, 2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    captured = {}

    class Capture(pl.Callback):  # the weights as the resumed run's first step receives them
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            captured.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    torch.manual_seed(1)
    resumed = Flow((1, 8, 8), levels=2, steps=1, hidden=4, **GLOW)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False,
                         callbacks=[Capture()])
    before_step = {}

    class Forward(pl.Callback):  # the actnorm parameters right after the resumed step's forward
        def on_before_backward(self, trainer, pl_module, loss):
            before_step.update({k: v.clone() for k, v in pl_module.state_dict().items() if "levels" in k})

    trainer.callbacks.append(Forward())
    trainer.fit(resumed, datamodule=DigitsDataModule(batch_size=16), ckpt_path=tmp_path / "last.ckpt")
    assert all(torch.equal(captured[k], saved[k]) for k in saved)
    actnorm = [k for k in saved if k.endswith((".loc", ".log_scale")) and "layers" in k]
    assert actnorm and all(torch.equal(before_step[k], saved[k]) for k in actnorm)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4)])
def test_whole_models_invert_and_have_the_autograd_log_det(family, shape):
    model = Flow(shape, levels=2, steps=2, hidden=8, **FAMILY_CONFIGS[family]).double()
    torch.manual_seed(0)
    u = torch.rand(2, *shape, dtype=torch.float64) * 0.9 + 0.05
    model.train()
    model.forward_flow(u)  # actnorm init
    _randomise(model, 0.1)
    model.eval()
    _check_bijection(model.forward_flow, model.inverse_flow, u)
    latents, _ = model.forward_flow(u)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes
    assert sum(math.prod(s) for s in model.latent_shapes) == model.num_dims


@pytest.mark.parametrize("permutation", ["none", "reverse"])
@pytest.mark.parametrize("steps", [2, 4])
def test_every_dimension_is_transformed_by_a_coupling(permutation, steps):
    # A coordinate that no coupling transforms reaches the base density on its own (each latent
    # depending on one input), so the flow models it as independent noise. Reversing the channels
    # and alternating the coupling parity did that to half of NICE's pixels.
    model = Flow((1, 4, 4), levels=1, steps=steps, hidden=8, **dict(NICE, permutation=permutation)).double()
    _randomise(model)
    u = torch.rand(4, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    jac = torch.autograd.functional.jacobian(lambda v: model.forward_flow(v.view(1, 1, 4, 4))[0][0].flatten(), u[0].flatten())
    inputs_per_latent = (jac.abs() > 1e-12).sum(1)
    assert inputs_per_latent.min().item() > 1, inputs_per_latent.tolist()


def test_nice_scales_every_dimension_and_refuses_a_per_channel_checkpoint():
    model = Flow((1, 8, 8), levels=2, steps=2, hidden=8, **NICE)
    scales = [m for m in model.modules() if isinstance(m, Scaling)]
    assert sum(m.log_scale.numel() for m in scales) == 64 + 32  # level 0: 4x4x4, level 1: 8x2x2
    old = {k: v for k, v in model.state_dict().items()}
    for key in [k for k in old if k.endswith("log_scale")]:
        old[key] = torch.zeros(*old[key].shape[:2], 1, 1)  # the per-channel ActNorm's layout
        old[key.replace("log_scale", "loc")] = torch.zeros(*old[key].shape[:2], 1, 1)
        old[key.replace("log_scale", "initialized")] = torch.tensor(True)
    with pytest.raises(CheckpointError, match="NICE checkpoint was written before"):
        model.load_state_dict(old)


class UniformBase(Flow):
    """The flow's bijection with a uniform base density on [0, 1)^D instead of N(0, I)."""

    def base_log_prob(self, latents):
        inside = torch.stack([((z >= 0) & (z < 1)).flatten(1).all(1) for z in latents]).all(0)
        return torch.where(inside, 0.0, -math.inf).to(latents[0].dtype)


class LogisticBase(Flow):
    """A standard logistic base density: with logit preprocessing (alpha = 0) the model is uniform."""

    def base_log_prob(self, latents):
        return sum((-z - 2 * torch.nn.functional.softplus(-z)).flatten(1).sum(1) for z in latents)


IDENTITY = dict(coupling="additive", permutation="none", actnorm=False, learned_prior=False, hidden=4)


@pytest.mark.parametrize("k", [1, 3])
def test_identity_flow_with_a_uniform_base_is_exactly_8_bits_per_dim(k):
    # Fresh additive couplings are zero: the flow only reorders coordinates (squeeze/split).
    model = UniformBase((3, 4, 4), levels=2, steps=1, preprocess="none", **IDENTITY).eval()
    x = torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8)
    x[0] = 255
    x[1] = 0
    assert torch.equal(model.nll_bits(x, k=k) / model.num_dims, torch.full((16,), 8.0))


def test_logit_preprocessing_jacobian_is_counted_uniform_model_is_8_bits_per_dim():
    model = LogisticBase((1, 8, 8), levels=1, steps=1, preprocess="logit", logit_alpha=0.0, **IDENTITY).eval()
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    assert torch.allclose(model.nll_bits(x) / 64, torch.full((32,), 8.0), atol=1e-4)


def test_8_bits_per_dim_through_the_bits_per_dim_callback():
    import pytorch_lightning as pl

    from genlab.callbacks.bpd import BitsPerDim
    from genlab.data import DigitsDataModule

    model = UniformBase((1, 8, 8), levels=2, steps=1, preprocess="none", **IDENTITY)
    seen = []  # images through the flow: validation is computed once, by the callback
    log_prob = model.log_prob
    model.log_prob = lambda u: seen.append(len(u)) or log_prob(u)
    trainer = pl.Trainer(callbacks=[BitsPerDim(chunk_size=50)], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    datamodule = DigitsDataModule()
    trainer.validate(model, datamodule=datamodule, verbose=False)
    assert trainer.callback_metrics["val/bpd"].item() == 8.0
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(8.0, abs=1e-6)
    assert sum(seen) == len(datamodule.split_dataset("val"))


def test_more_dequantization_samples_tighten_the_bound():
    torch.manual_seed(0)
    model = _randomise(Flow((1, 8, 8), levels=2, steps=2, hidden=8, **GLOW), 0.05).eval()
    x = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8).expand(300, -1, -1, -1)
    torch.manual_seed(1)
    one, many = model.nll_bits(x, k=1).mean(), model.nll_bits(x, k=32).mean()
    assert many < one


def _trained_like(shape=(1, 8, 8), **kw) -> Flow:
    torch.manual_seed(0)
    model = Flow(shape, levels=2, steps=2, hidden=8, **{**GLOW, **kw})
    model.train()
    model.forward_flow(torch.rand(8, *shape))
    return _randomise(model, 0.05).eval()


def test_temperature_zero_returns_the_mode_and_sampling_is_seeded():
    model = _trained_like()
    cold = TemperatureSampler(0.0).sample(model, 5)
    assert cold.dtype == torch.uint8 and cold.shape == (5, 1, 8, 8)
    assert (cold == cold[0]).all()
    mode = model.decode([torch.zeros(1, *s) for s in model.latent_shapes])
    assert torch.equal(cold[:1], mode)
    sampler = TemperatureSampler(1.0)
    with seeded(3):
        a = sampler.sample(model, 6)
    with seeded(3):
        b = sampler.sample(model, 6)
    with seeded(4):
        c = sampler.sample(model, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(img.flatten().tolist()) for img in a}) == 6


def test_interpolation_starts_and_ends_at_the_two_images():
    model = _trained_like((3, 8, 8))
    start = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    end = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    grid = TemperatureSampler().interpolate(model, start, end, steps=5)
    assert grid.shape == (10, 3, 8, 8) and grid.dtype == torch.uint8
    assert torch.equal(grid[0], start[0]) and torch.equal(grid[4], end[0])
    assert torch.equal(grid[5], start[1]) and torch.equal(grid[9], end[1])
    assert not torch.equal(grid[2], start[0]) and not torch.equal(grid[2], end[0])
    with pytest.raises(ConfigError, match="interpolate_steps"):
        TemperatureSampler().interpolate(model, start, end, steps=1)


def test_an_inverse_that_blows_up_stops_with_a_clear_error():
    model = _trained_like()
    with pytest.raises(FlowInverseError, match=r"level 1 layer \d+ \(\w+\).*5 of 5 examples.*temperature"):
        model.decode([torch.full((5, *s), math.inf) for s in model.latent_shapes])
    with torch.no_grad():
        model.levels[0].layers[-2].net[0].weight[0, 0, 0, 0] = math.nan  # a diverged weight
    with pytest.raises(FlowInverseError, match="level 0"):
        TemperatureSampler(0.7).sample(model, 3)


def test_the_temperature_sampler_serves_flows_only():
    assert compatible_samplers("flow") == ["temperature"]
    vae = VAE((1, 8, 8), channels=(8,))
    with pytest.raises(ConfigError, match=r"serves the families \['flow'\].*'vae'.*sampler=prior"):
        TemperatureSampler().check(vae, compatible_samplers("vae"))
    TemperatureSampler().check(_trained_like(), compatible_samplers("flow"))
    with pytest.raises(ConfigError, match="sampler.temperature"):
        TemperatureSampler(-0.5)


def test_an_image_size_the_levels_cannot_squeeze_names_sizes_that_work():
    with pytest.raises(ConfigError, match=r"dataset.image_size=28 .*model.levels=3.*multiple of 8.*24 or 32.*model.levels=2"):
        Flow((1, 28, 28), levels=3)
    with pytest.raises(ConfigError, match=r"image_size=7 .*multiple of 2.*image_size=6 or 8"):
        Flow((1, 7, 7), levels=1)
    assert Flow((1, 28, 28), levels=2).latent_shapes == [(2, 14, 14), (8, 7, 7)]


@pytest.mark.parametrize("key, value", [("coupling", "quadratic"), ("masks", "stripes"), ("permutation", "random"),
                                        ("net", "mlp"), ("preprocess", "tanh"), ("levels", 0), ("steps", -1),
                                        ("logit_alpha", 0.5)])
def test_bad_model_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}="):
        Flow((1, 8, 8), **{key: value})


def test_coupling_scales_stay_bounded():
    layer = _randomise(Coupling(4, "channel", 0, hidden=8, scale_bound=1.5), 50.0)
    _, logdet = layer(torch.randn(2, 4, 3, 3) * 100)
    assert logdet.abs().max() <= 1.5 * 2 * 9  # |s| < bound on each of the 2x3x3 transformed values


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_alternating_parities_transform_complementary_parts(mask):
    x = torch.randn(2, 4, 4, 4)
    changed = []
    for parity in (0, 1):
        layer = _randomise(Coupling(4, mask, parity, hidden=8))
        changed.append((layer(x)[0] != x).any(0))  # [C, H, W]: which values the layer moved
    assert not (changed[0] & changed[1]).any() and (changed[0] | changed[1]).all()
