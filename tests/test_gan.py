"""GAN family: the losses and gradient penalty by hand, n critic steps, truncation, bad input."""

import math

import pytest
import pytorch_lightning as pl
import torch

from genlab.config import build_sampler, compatible_samplers, instantiate
from genlab.data import DigitsDataModule
from genlab.errors import ConfigError
from genlab.models.gan import (
    GAN,
    critic_g_loss,
    gradient_penalty,
    hinge_d_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    wasserstein_d_loss,
)
from genlab.models.vae import VAE
from genlab.nets.likelihoods import to_uint8
from genlab.samplers.prior import PriorSampler
from genlab.samplers.truncation import TruncationSampler
from genlab.train import train

from conftest import compose_cfg

TINY = dict(latent_dim=8, g_width=8, d_width=8)


# ----- losses on fixed logits, against values worked out by hand ---------------------------
def test_nonsaturating_losses_by_hand():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    # softplus(-r) = log(1 + e^-r): log 2 = 0.693147, log(1 + e^-2) = 0.126928;
    # softplus(f) = log(1 + e^f): log 2, log(1 + e^-1) = 0.313262
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx((0.693147 + 0.126928) / 2 + (0.693147 + 0.313262) / 2, abs=1e-5)
    # softplus(-f): log 2, log(1 + e^1) = 1.313262
    assert nonsaturating_g_loss(fake).item() == pytest.approx((0.693147 + 1.313262) / 2, abs=1e-5)


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - r) = [0.5, 0] -> 0.25; relu(1 + f) = [0, 1.5] -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0)
    assert critic_g_loss(fake).item() == pytest.approx(0.75)  # -mean(f)


def test_wasserstein_losses_by_hand():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -1.5])
    assert wasserstein_d_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)  # mean f - mean r
    assert critic_g_loss(fake).item() == pytest.approx(0.5)


def test_gradient_penalty_matches_its_definition_by_hand():
    # D(x) = a * sum(x^2) has input gradient 2 a x_hat.
    a = torch.nn.Parameter(torch.tensor(1.0))
    real = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    fake = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    eps = torch.tensor([0.5, 0.25])
    # x_hat = (2, 0) and (0, 1): gradient norms 4 and 2 -> (4 - 1)^2 = 9, (2 - 1)^2 = 1 -> mean 5
    gp = gradient_penalty(lambda x: a * x.pow(2).flatten(1).sum(1), real, fake, eps=eps)
    assert gp.item() == pytest.approx(5.0)
    # differentiable: d gp / d a = mean(2 (2a|x|-1) 2|x|) = mean(2*3*4, 2*1*2) = 14
    gp.backward()
    assert a.grad.item() == pytest.approx(14.0)


def test_gradient_penalty_of_a_linear_critic_is_exact_for_any_interpolation():
    w = torch.randn(1, 3, 4, 4)
    w = 3 * w / w.norm()  # ||grad|| = 3 everywhere -> (3 - 1)^2 = 4
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4))
    assert gp.item() == pytest.approx(4.0, rel=1e-5)


# ----- the networks fit the data --------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("loss", ["nonsaturating", "wgan_gp", "hinge"])
def test_networks_are_sized_to_the_data(shape, loss):
    model = GAN(shape, num_classes=10, conditional=True, loss=loss, **TINY).eval()
    images = TruncationSampler().sample(model, 3)
    assert images.dtype == torch.uint8 and images.shape == (3, *shape)
    logits = model.discriminator(torch.zeros(4, *shape), torch.arange(4))
    assert logits.shape == (4,)
    has_sn = any("parametrizations" in name for name, _ in model.discriminator.named_parameters())
    assert has_sn == (loss == "hinge")  # hinge: spectral norm in D
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.discriminator.modules())
    assert has_bn == (loss == "nonsaturating")  # never batch norm under a gradient penalty


def test_conditional_generator_and_projection_discriminator_use_the_labels():
    torch.manual_seed(0)
    model = GAN((1, 8, 8), num_classes=10, conditional=True, **TINY).eval()
    z = torch.randn(1, 8).expand(10, -1)
    images = model.generate(z, torch.arange(10))
    assert len({tuple(img.flatten().tolist()) for img in to_uint8(images)}) > 1
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        model.discriminator.embed.weight[3].zero_()
        assert model.discriminator(x, torch.tensor([3, 3])).tolist() != model.discriminator(x, torch.tensor([4, 4])).tolist()
    with pytest.raises(ValueError, match="class labels"):
        model.generate(z)


# ----- truncation sampling -------------------------------------------------------------------
def test_truncation_psi_zero_collapses_to_the_image_at_the_mean_first_feature_map():
    torch.manual_seed(0)
    model = GAN((1, 8, 8), **TINY).eval()
    mean = model.mean_mapped()
    assert torch.equal(mean, model.mean_mapped())  # a fixed estimate, and the global RNG is left alone
    torch.manual_seed(5)
    z = model.prior_latents(4096)
    assert torch.allclose(mean[0], model.map_latents(z).mean(0), atol=0.05)  # = E_z[w(z)]
    samples = TruncationSampler(psi=0.0).sample(model, 6)
    assert torch.equal(samples, to_uint8(model.synthesise(mean.expand(6, -1, -1, -1))))
    # psi = 1 is plain sampling, bit for bit
    torch.manual_seed(3)
    plain = TruncationSampler(psi=1.0).sample(model, 6)
    torch.manual_seed(3)
    assert torch.equal(plain, to_uint8(model.generate(model.prior_latents(6))))
    assert len({tuple(s.flatten().tolist()) for s in plain}) == 6
    # psi in between: exactly G(mean + psi (w(z) - mean)) for the same z
    torch.manual_seed(3)
    half = TruncationSampler(psi=0.5).sample(model, 4)
    torch.manual_seed(3)
    w = model.map_latents(model.prior_latents(4))
    assert torch.equal(half, to_uint8(model.synthesise(mean + 0.5 * (w - mean))))
    # diversity shrinks with psi
    torch.manual_seed(1)
    spread = [TruncationSampler(psi=p).sample(model, 64).float().std(0).mean().item() for p in (1.0, 0.5, 0.1)]
    assert spread[0] > spread[1] > spread[2]


def test_conditional_truncation_pulls_each_class_toward_its_own_mean():
    torch.manual_seed(0)
    model = GAN((1, 8, 8), num_classes=10, conditional=True, **TINY).eval()
    labels = torch.tensor([3, 7, 3])
    images = TruncationSampler(psi=0.0).sample(model, 3, labels)
    assert torch.equal(images[0], images[2]) and not torch.equal(images[0], images[1])
    for label, image in zip(labels, images):
        assert torch.equal(image[None], to_uint8(model.synthesise(model.mean_mapped(label[None]))))


def test_truncation_threshold_bounds_the_latents_and_cannot_loop():
    model = GAN((1, 8, 8), **TINY)
    torch.manual_seed(0)
    z = model.prior_latents(2000, 0.5)
    assert z.abs().max().item() <= 0.5 and 0.2 < z.std().item() < 0.29  # N(0, 1) on [-0.5, 0.5]: std 0.28
    # a bound that a redraw loop would practically never meet (P(|z| <= 1e-7) = 8e-8 per draw)
    images = TruncationSampler(threshold=1e-7).sample(model.eval(), 64)
    assert images.shape == (64, 1, 8, 8)
    assert model.prior_latents(100, 1e-7).abs().max().item() <= 1e-7


def test_samplers_refuse_other_families_and_name_those_that_fit():
    assert compatible_samplers("gan") == ["truncation"]
    with pytest.raises(ConfigError, match=r"serves the families \['gan'\].*'vae'.*sampler=prior"):
        TruncationSampler().check(VAE((1, 8, 8), channels=(8,)), compatible_samplers("vae"))
    with pytest.raises(ConfigError, match=r"'gan'.*sampler=truncation"):
        build_sampler(compose_cfg(overrides=["sampler=prior"]).sampler, GAN((1, 8, 8), **TINY))
    assert isinstance(PriorSampler(), PriorSampler)


def test_model_dcgan_picks_the_truncation_sampler():
    cfg = compose_cfg(overrides=["model=dcgan"])
    assert cfg.sampler._target_ == "genlab.samplers.truncation.TruncationSampler"
    model = instantiate(cfg.model, "model")
    assert model.family == "gan" and model.likelihood is None


# ----- n critic steps per generator step ---------------------------------------------------------
class StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.g_grad_norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append("G" if optimizer is trainer.optimizers[0] else "D")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.generator.parameters() if p.grad is not None]
        self.g_grad_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def _fit(model: GAN, batches: int, **trainer_kwargs) -> StepCounter:
    counter = StepCounter()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[counter],
                         enable_model_summary=False, **trainer_kwargs)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=24))
    assert trainer.global_step == counter.steps.count("G")  # Lightning counts the generator's steps
    return counter


@pytest.mark.parametrize("loss, n_critic", [("wgan_gp", None), ("hinge", 3), ("nonsaturating", None)])
def test_n_critic_discriminator_steps_happen_per_generator_step(loss, n_critic):
    model = GAN((1, 8, 8), loss=loss, n_critic=n_critic, **TINY)
    expected = n_critic or (5 if loss == "wgan_gp" else 1)
    assert model.n_critic == expected
    counter = _fit(model, batches=3)
    assert counter.steps == (["D"] * expected + ["G"]) * 3


def test_model_gradient_clip_val_clips_the_unscaled_gradients():
    torch.manual_seed(0)
    clipped = _fit(GAN((1, 8, 8), loss="hinge", gradient_clip_val=1e-4, **TINY), batches=2)
    assert max(clipped.g_grad_norms) == pytest.approx(1e-4, rel=1e-3)
    torch.manual_seed(0)
    free = _fit(GAN((1, 8, 8), loss="hinge", **TINY), batches=2)
    assert min(free.g_grad_norms) > 1e-3


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_both_networks(precision):
    torch.manual_seed(0)
    model = GAN((1, 8, 8), loss="wgan_gp", n_critic=2, gradient_clip_val=10.0, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counter = _fit(model, batches=2, precision=precision)
    assert counter.steps == ["D", "D", "G"] * 2
    for prefix in ("generator.", "discriminator."):
        changed = [k for k, v in model.state_dict().items() if k.startswith(prefix) and v.is_floating_point()
                   and not torch.equal(v, before[k])]
        assert changed, f"{prefix} did not change under {precision}"
        assert all(torch.isfinite(v).all() for k, v in model.state_dict().items() if k.startswith(prefix))


# ----- bad config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="minimax"), "model.loss='minimax'"),
    (dict(loss="wgan_gp", disc_norm="batch"), "model.disc_norm=batch"),
    (dict(disc_norm="group"), "model.disc_norm='group'"),
    (dict(n_critic=0), "model.n_critic"),
    (dict(conditional=True), "dataset.num_classes"),
    (dict(gradient_clip_val=-1.0), "model.gradient_clip_val"),
])
def test_bad_model_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GAN((1, 8, 8), **{**TINY, **kwargs})


def test_an_image_size_that_cannot_be_halved_is_refused():
    with pytest.raises(ConfigError, match="dataset.image_size"):
        GAN((1, 7, 7), **TINY)


@pytest.mark.parametrize("override, match", [
    ("trainer.gradient_clip_val=0.5", "model.gradient_clip_val"),
    ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2"),
])
def test_trainer_settings_manual_optimization_cannot_honour_are_refused_before_training(override, match, tmp_path):
    cfg = compose_cfg(overrides=["experiment=dcgan_digits", override, "logger=none"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_an_objective_the_gan_cannot_measure_is_refused(tmp_path):
    assert compose_cfg(overrides=["model=dcgan"]).objective == "val/fid_classifier"  # follows the family
    cfg = compose_cfg(overrides=["model=dcgan", "objective=val/bpd", "logger=none"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"objective=val/bpd is not measured.*val/fid_classifier"):
        train(cfg)
    cfg = compose_cfg(overrides=["experiment=dcgan_digits", "callbacks.fid=null", "logger=none"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"objective=val/fid_none is not measured"):
        train(cfg)


def test_experiment_objectives_follow_the_fid_extractor():
    for name, extractor in (("dcgan_digits", "classifier"), ("dcgan_mnist", "classifier"), ("dcgan_cifar10", "inception")):
        cfg = compose_cfg(overrides=[f"experiment={name}"])
        assert cfg.objective == f"val/fid_{extractor}" and cfg.objective_mode == "min"
        assert math.isfinite(cfg.model.gp_weight)
