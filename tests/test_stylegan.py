"""model=stylegan and what it brought to every GAN: modulated convolutions, style mixing,
truncation in W, lazy R1, DiffAugment, horizontal flips, and one run through genlab-train."""

import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from genlab.data import DigitsDataModule, TorchvisionDataModule
from genlab.errors import ConfigError, DataError
from genlab.models.gan import GAN
from genlab.models.stylegan import StyleGAN, lazy_r1
from genlab.nets.diffaugment import AUGMENTATIONS, diff_augment
from genlab.nets.likelihoods import to_uint8
from genlab.nets.stylegan import ModulatedConv, modulated_conv2d
from genlab.sample import sample
from genlab.samplers.truncation import TruncationSampler

from conftest import compose_cfg
from test_ddp import run_cli

TINY = dict(latent_dim=8, w_dim=8, g_width=8, d_width=8, max_width=16, mapping_layers=2)


# ----- the generator's blocks ------------------------------------------------------------------
def test_demodulated_convolution_keeps_unit_variance():
    """Demodulation rescales each example's modulated weights to unit norm per output channel,
    so unit-variance i.i.d. inputs give outputs of variance sum(w^2) = 1, whatever the styles
    and the weights' scale. Interior pixels (the border sees zero padding) of 64 x 16 channels
    x 14^2 positions: the estimate's sampling error is ~0.01, the tolerance 0.05."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, 16, 16, generator=gen)
    weight = 5.0 * torch.randn(16, 32, 3, 3, generator=gen)
    styles = torch.rand(64, 32, generator=gen) * 3 + 0.1
    out = modulated_conv2d(x, weight, styles, demodulate=True)[:, :, 1:-1, 1:-1]
    assert out.var().item() == pytest.approx(1.0, abs=0.05)
    per_example = out.flatten(1).var(1)
    assert per_example.min() > 0.8 and per_example.max() < 1.2
    # it is the convolution of each example with its own modulated, demodulated weights
    for i in range(2):
        w_i = weight * styles[i].view(1, -1, 1, 1)
        w_i = w_i / w_i.square().sum((1, 2, 3), keepdim=True).sqrt()
        per = torch.nn.functional.conv2d(x[i : i + 1], w_i, padding=1)
        assert torch.allclose(modulated_conv2d(x[i : i + 1], weight, styles[i : i + 1]), per, atol=1e-4)
    # without demodulation the variance follows the styles and weights
    assert modulated_conv2d(x, weight, styles, demodulate=False)[:, :, 1:-1, 1:-1].var().item() > 10


def _style_inputs(model: StyleGAN) -> tuple[list[torch.Tensor], list]:
    """The w each modulated layer read in the last forward pass, in the order the layers run."""
    seen: list[torch.Tensor] = []
    hooks = [m.affine.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
             for m in model.generator.synthesis.modules() if isinstance(m, ModulatedConv)]
    return seen, hooks


def test_style_mixing_feeds_the_second_style_from_the_chosen_layer_on():
    torch.manual_seed(0)
    model = StyleGAN((1, 8, 8), sample_noise="none", **TINY).eval()
    assert model.num_ws == 4  # 8x8 = const 4x4 + one level: conv, toRGB, up conv, conv, toRGB
    w_a, w_b = model.map_latents(model.prior_latents(3)), model.map_latents(model.prior_latents(3))
    # the layers read, in order: conv0 <- w0, toRGB0 <- w1, up conv <- w1, conv <- w2, toRGB1 <- w3
    index = [0, 1, 1, 2, 3]
    for layer in range(model.num_ws + 1):
        seen, hooks = _style_inputs(model)
        model.synthesise(model.mix_styles(w_a, w_b, layer))
        for h in hooks:
            h.remove()
        assert len(seen) == len(index)
        for w_seen, i in zip(seen, index):
            assert torch.equal(w_seen, w_b if i >= layer else w_a), (layer, i)
    # mixing from layer 0 is all B, from num_ws on all A; in between differs from both
    img_a, img_b = model.synthesise(w_a), model.synthesise(w_b)
    assert torch.equal(model.synthesise(model.mix_styles(w_a, w_b, 0)), img_b)
    assert torch.equal(model.synthesise(model.mix_styles(w_a, w_b, model.num_ws)), img_a)
    mixed = model.synthesise(model.mix_styles(w_a, w_b, 2))
    assert not torch.allclose(mixed, img_a) and not torch.allclose(mixed, img_b)


def test_truncation_psi_zero_gives_the_image_of_the_average_w():
    torch.manual_seed(0)
    model = StyleGAN((1, 8, 8), sample_noise="const", **TINY)
    with torch.enable_grad():  # the mapping network tracks its average w while it trains
        for _ in range(3):
            model.generator.mapping(model.prior_latents(64))
    w_avg = model.generator.mapping.w_avg.clone()
    assert w_avg.abs().sum() > 0
    model.eval()
    assert torch.equal(model.mean_mapped()[0], w_avg)
    target = to_uint8(model.synthesise(w_avg.unsqueeze(0)))
    samples = TruncationSampler(psi=0.0).sample(model, 6)
    assert torch.equal(samples, target.expand(6, -1, -1, -1))
    assert model.generator.mapping.w_avg.equal(w_avg)  # sampling (eval) leaves the average alone
    # psi = 1: plain, diverse samples; psi = 0.5 halves the distance to the average in W
    torch.manual_seed(3)
    plain = TruncationSampler(psi=1.0).sample(model, 6)
    assert len({tuple(s.flatten().tolist()) for s in plain}) == 6
    torch.manual_seed(3)
    w = model.map_latents(model.prior_latents(4))
    torch.manual_seed(3)
    assert torch.equal(TruncationSampler(psi=0.5).mapped(model, 4), w_avg + 0.5 * (w - w_avg))


# ----- lazy R1 ---------------------------------------------------------------------------------
def test_lazy_r1_runs_every_n_steps_scaled_by_n():
    """A linear D(x) = <a, x> + b has input gradient a for every image, so R1 = ||a||^2."""
    torch.manual_seed(0)
    a = torch.randn(1, 2, 3, 3)

    def discriminator(x):
        return (a * x).sum((1, 2, 3)) + 0.7

    real = torch.randn(5, 2, 3, 3)
    by_hand = float(a.square().sum())
    gamma, every = 0.3, 4
    terms = [lazy_r1(discriminator, real, gamma, every, step) for step in range(9)]
    assert [t is not None for t in terms] == [True, False, False, False, True, False, False, False, True]
    for t in terms[::every]:
        assert float(t) == pytest.approx(gamma / 2 * every * by_hand, rel=1e-6)
    assert lazy_r1(discriminator, real, 0.0, every, 0) is None  # gamma 0: off
    # every = 1 is plain R1; a quadratic D(x) = sum(x^2) has gradient 2x: E||2x||^2
    quad = lazy_r1(lambda x: x.square().sum((1, 2, 3)), real, 2.0, 1, 7)
    assert float(quad) == pytest.approx(float((2 * real).square().sum((1, 2, 3)).mean()), rel=1e-6)


# ----- DiffAugment -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_diffaugment_is_differentiable(name):
    """For fixed random draws each augmentation is (piecewise) linear in the image: autograd's
    gradient matches finite differences."""
    x = torch.rand(2, 3, 4, 4, dtype=torch.double) * 2 - 1

    def augmented(inp):
        torch.manual_seed(0)  # the same draws at every evaluation
        return diff_augment(inp, [name])

    assert torch.autograd.gradcheck(augmented, (x.detach().requires_grad_(True),), eps=1e-6, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.equal(diff_augment(x, [name]), x)  # it does change the images


def test_diffaugment_brightness_is_diffaugments_own():
    """DiffAugment (Zhao et al., 2020) shifts brightness by U[-0.5, 0.5) on images in [-1, 1],
    the range genlab's GANs use (it was doubled to +-1, half the whole range). On constant grey
    images saturation and contrast change nothing, so colour is the shift alone."""
    x = torch.zeros(4000, 1, 4, 4)
    torch.manual_seed(0)
    shift = diff_augment(x, ["color"])[:, 0, 0, 0]
    assert float(diff_augment(x[:8] + 0.3, ["color"]).flatten(1).std(1).max()) < 1e-6  # still constant
    assert -0.5 <= float(shift.min()) < -0.49 and 0.49 < float(shift.max()) < 0.5
    assert abs(float(shift.mean())) < 0.02


class DInputs(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.hook = None

    def on_train_start(self, trainer, pl_module):
        self.hook = pl_module.discriminator.register_forward_pre_hook(
            lambda _, args: self.batches.append(args[0].detach().clone()))


def _fit(model, batches: int = 2, **kwargs) -> DInputs:
    spy = DInputs()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[spy],
                         enable_model_summary=False, **kwargs)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return spy


@pytest.mark.parametrize("family", ["dcgan", "stylegan"])
def test_diffaugment_reaches_the_discriminator_for_real_and_fake_alike(family):
    """With cutout every image the discriminator judges in training, real (8-bit values never
    map to exactly 0 in [-1, 1]) or generated, has a square of exact zeros; without, none has."""
    def build(policy):
        torch.manual_seed(0)
        if family == "dcgan":
            return GAN((1, 8, 8), latent_dim=8, g_width=8, d_width=8, diffaugment=policy)
        return StyleGAN((1, 8, 8), r1_every=2, **TINY, diffaugment=policy)

    spy = _fit(build("cutout"), batches=3)
    # per step: D(real), D(fake) in D's step, D(fake) in G's; StyleGAN adds D(real) for its lazy
    # R1 on the steps divisible by r1_every=2: steps 0 and 2 of 0, 1, 2
    assert len(spy.batches) == 3 * 3 + 2 * (family == "stylegan")
    for batch in spy.batches:
        assert ((batch == 0).flatten(1).sum(1) >= 4).all()
    plain = _fit(build(None))
    assert all(((batch == 0).flatten(1).sum(1) == 0).all() for batch in plain.batches)


def test_stylegan_trains_both_networks_under_bf16():
    torch.manual_seed(0)
    model = StyleGAN((1, 8, 8), r1_every=1, pl_weight=2.0, pl_every=1, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, precision="bf16-mixed")
    for prefix in ("generator.", "discriminator."):
        changed = [k for k, v in model.state_dict().items() if k.startswith(prefix) and v.is_floating_point()
                   and not torch.equal(v, before[k])]
        assert changed, prefix
        assert all(torch.isfinite(v).all() for k, v in model.state_dict().items())
    assert model.pl_mean > 0  # the path-length regulariser ran


def test_the_discriminator_judges_what_is_sampled_in_the_data_range():
    """Samples are in [-1, 1] and real images never leave it; the synthesis ends in an unbounded
    linear sum. D judged that raw output, so it could tell fakes by values no sample has (digits
    and MNIST are mostly exactly -1). Now the generator's images are tanh of the sum, for D and
    for sampling alike, and G still gets a gradient where its raw output is far out of range."""
    from genlab.models.stylegan import in_data_range

    torch.manual_seed(0)
    model = StyleGAN((1, 8, 8), r1_gamma=0.0, sample_noise="none", **TINY)
    model.generator.synthesis.to_images[-1].bias.data.fill_(6.0)  # every raw pixel far above 1
    w = model.map_latents(model.prior_latents(4))
    raw = model.generator.synthesis(model.generator.broadcast(w), "none")
    assert float(raw.min()) > 1.0
    assert torch.equal(model.synthesise(w), in_data_range(raw).float())  # what is sampled
    spy = _fit(model, batches=2)
    assert len(spy.batches) == 6 and all(float(b.abs().max()) <= 1.0 for b in spy.batches)  # what D judged
    assert float(model.generator.synthesis.to_images[-1].bias) != 6.0  # G's step reached past the saturation


def test_the_generator_step_computes_no_discriminator_weight_gradients():
    """G's loss reaches G through D, but D's weights are not G's to step: StyleGAN2 skips their
    gradients (a third of a step's backward work) and builds no graph through G for D's step.
    Counted by hooks: D's weight gradient once per step (its own step; R1 off), G's once."""
    torch.manual_seed(0)
    model = StyleGAN((1, 8, 8), r1_gamma=0.0, **TINY)
    counts = {"d": 0, "g": 0}
    model.discriminator.out.weight.register_hook(lambda g: counts.__setitem__("d", counts["d"] + 1))
    model.generator.synthesis.const.register_hook(lambda g: counts.__setitem__("g", counts["g"] + 1))
    _fit(model, batches=3)
    assert counts == {"d": 3, "g": 3}
    assert all(p.requires_grad for p in model.discriminator.parameters())  # unfrozen after G's step


@pytest.mark.parametrize("kwargs, match", [
    (dict(conditional=True), "model.conditional=true"),
    (dict(sample_noise="loud"), "model.sample_noise"),
    (dict(mixing_prob=1.5), "model.mixing_prob"),
    (dict(r1_gamma=-1.0), "model.r1_gamma"),
    (dict(mapping_lr_mul=0.0), "model.mapping_lr_mul"),
    (dict(diffaugment="color,blur"), "model.diffaugment='color,blur'.*'blur'"),
    (dict(diffaugment=["color", "blur"]), r"model.diffaugment=\['color', 'blur'\].*'blur'"),
])
def test_bad_stylegan_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StyleGAN((1, 8, 8), num_classes=10, **{**TINY, **kwargs})


def test_style_mixing_is_refused_for_the_dcgan():
    with pytest.raises(ConfigError, match="model=stylegan"):
        GAN((1, 8, 8), latent_dim=8).mix_styles(torch.zeros(1, 8), torch.zeros(1, 8), 1)


# ----- horizontal flips --------------------------------------------------------------------------
def test_hflip_is_refused_where_a_mirror_image_is_not_data():
    from genlab.data import FSDDDataModule

    for dm in (DigitsDataModule(hflip=True), TorchvisionDataModule(name="mnist", root="/nonexistent", hflip=True),
               FSDDDataModule(root="/nonexistent", hflip=True)):  # reversed in time
        with pytest.raises(DataError, match="dataset.hflip=true.*set dataset.hflip=false"):
            dm.check()
    TorchvisionDataModule(name="cifar10", root="/nonexistent", hflip=True)._check_config()  # valid there


def test_hflip_trains_on_each_image_and_its_mirror():
    class Symmetric(DigitsDataModule):
        mirror_symmetric = True

    dm = Symmetric(hflip=True, batch_size=4000)
    train = dm.split_dataset("train")
    x, _ = next(iter(dm.train_dataloader()))
    assert len(x) == 2 * len(train)
    images = torch.stack([train[i][0] for i in range(len(train))])
    key = lambda t: sorted(tuple(i.flatten().tolist()) for i in t)  # noqa: E731
    assert key(x) == key(torch.cat([images, images.flip(-1)]))
    assert len(dm.split_dataset("val")) == len(Symmetric().split_dataset("val"))  # train split only


# ----- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_stylegan_trains_on_digits_logs_fid_precision_recall_and_samples(tmp_path):
    run = tmp_path / "run"
    run_cli("genlab.train", "experiment=stylegan_digits", "model.latent_dim=16", "model.w_dim=16",
            "model.g_width=16", "model.d_width=16", "model.diffaugment=[translation,cutout]",
            "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
            "callbacks.fid.num_samples=100", "callbacks.samples.n=16", "logger=none",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}")
    final = json.loads((run / "metrics.json").read_text())["final"]
    for split in ("val", "test"):
        assert math.isfinite(final[f"{split}/fid_classifier"])
        assert 0 <= final[f"{split}/precision_classifier"] <= 1 and 0 <= final[f"{split}/recall_classifier"] <= 1
    assert "val/bpd" not in final
    assert list((run / "samples").glob("*.png"))
    # the resolved config records the augmentation
    assert list(OmegaConf.load(run / "config_resolved.yaml").model.diffaugment) == ["translation", "cutout"]
    # style mixing and truncation grids from the checkpoint
    for grid, cells in (("style_mixing", 16), ("truncation", 3 * 6)):
        cfg = compose_cfg("sample", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"grid={grid}", "grid_rows=3"],
                          output_dir=tmp_path / grid)
        sample(cfg)
        assert np.load(tmp_path / grid / f"{grid}.npz")["images"].shape == (cells, 1, 8, 8)


def test_grids_are_what_the_sampler_draws_and_others_are_refused_naming_them(tmp_path):
    from genlab.config import build_sampler, instantiate
    from genlab.sample import grid

    options = OmegaConf.create({"grid_psis": [1.0, 0.0], "grid_layer": 1})
    stylegan = StyleGAN((1, 8, 8), latent_dim=8, w_dim=8, mapping_layers=2, g_width=8, d_width=8, max_width=8)
    truncation = TruncationSampler()
    assert set(truncation.grids) == {"truncation", "style_mixing"}
    images, per_row = truncation.grid(stylegan.eval(), "truncation", 3, options)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8 and per_row == 2
    images, per_row = truncation.grid(stylegan, "style_mixing", 3, options)
    assert per_row == 4 and images.shape[0] % per_row == 0
    cfg = compose_cfg(overrides=["model=vae"], output_dir=tmp_path)
    vae = instantiate(cfg.model, "model")
    prior = build_sampler(cfg.sampler, vae)
    sample_cfg = OmegaConf.create({"grid": "truncation", "grid_rows": 2, "seed": 0})
    with pytest.raises(ConfigError, match=r"grid=truncation: \w+, the sampler of this vae model, draws no grids"):
        grid(sample_cfg, vae, prior, tmp_path / "out")
    assert not (tmp_path / "out").exists()
