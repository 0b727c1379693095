"""Autoregressive family: causality (and the blind spot), exact likelihood, pixel-by-pixel
sampling (cached = uncached), conditioning, training through the entry point, DDP."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from genlab.config import compatible_samplers
from genlab.errors import ConfigError
from genlab.models.autoregressive import ARTransformer, GatedPixelCNN, PixelCNN
from genlab.models.vae import VAE
from genlab.samplers.autoregressive import AutoregressiveSampler
from genlab.utils import seeded

from conftest import compose_cfg

TINY = {
    "pixelcnn": (PixelCNN, dict(channels=24, blocks=2, first_kernel_size=3, head_channels=24)),
    # first layer 3x3 and 5 layers: reaches 5 columns and 6 rows, enough for 5x5 images (24
    # channels: with 4 per colour group, dead ReLUs can cut a tiny net's R -> G path)
    "gated_pixelcnn": (GatedPixelCNN, dict(channels=24, layers=5, first_kernel_size=3, head_channels=24)),
    "ar_transformer": (ARTransformer, dict(dim=16, depth=2, heads=2)),
}
SHAPES = [(1, 5, 5), (3, 4, 4)]  # grey and RGB


def tiny(name: str, shape, **kw):
    torch.manual_seed(0)
    cls, sizes = TINY[name]
    return cls(shape, **{**sizes, **kw}).double().eval()


def raster(t: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [H*W*C] in raster-then-channel order (the model's order)."""
    return t.permute(1, 2, 0).reshape(-1)


def dependency(model, shape) -> torch.Tensor:
    """D[k, j] = total |gradient| of the logits at position k w.r.t. the input at position j."""
    c, h, w = shape
    x = torch.randint(0, 256, (1, *shape), dtype=torch.uint8)
    embedded = model.embed(x).detach().requires_grad_(True)
    logits = model.logits_from_embedded(embedded).view(1, c, 256, h, w)
    weights = torch.randn(256, dtype=logits.dtype)  # a generic function of the 256 logits
    rows = []
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                (grad,) = torch.autograd.grad((logits[0, ch, :, i, j] * weights).sum(), embedded, retain_graph=True)
                grad = grad[0].abs()
                rows.append(raster(grad.sum(-1) if grad.dim() == 4 else grad))
    return torch.stack(rows)


@pytest.mark.parametrize("shape", SHAPES, ids=["grey", "rgb"])
@pytest.mark.parametrize("name", list(TINY))
def test_logits_never_depend_on_the_current_or_later_sub_pixels(name, shape):
    d = dependency(tiny(name, shape), shape)
    k = d.shape[0]
    assert (d.triu() == 0).all()  # j >= k: exactly zero, R -> G -> B within a pixel
    if name != "pixelcnn":  # no blind spot: every earlier sub-pixel matters
        assert (d.tril(-1)[torch.ones(k, k, dtype=torch.bool).tril(-1)] != 0).all()


def test_pixelcnn_has_the_blind_spot_that_gated_pixelcnn_removes():
    # Same 3x3 kernels, enough depth to reach every earlier pixel of a 6x6 image.
    shape = (1, 6, 6)
    plain = dependency(tiny("pixelcnn", shape, blocks=5), shape)
    gated = dependency(tiny("gated_pixelcnn", shape, layers=6), shape)
    earlier = torch.ones(36, 36, dtype=torch.bool).tril(-1)
    # pixel (3, 1) never sees (1, 5): up and to the right, out of the masked kernels' cone
    assert plain[3 * 6 + 1, 1 * 6 + 5] == 0 and gated[3 * 6 + 1, 1 * 6 + 5] != 0
    assert (plain[earlier] == 0).sum() > 20 and (gated[earlier] != 0).all()


@pytest.mark.parametrize("name", list(TINY))
def test_each_conditional_is_normalised_and_nll_is_the_sum_of_them(name):
    shape = (3, 3, 3)
    model = tiny(name, shape)
    torch.manual_seed(1)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    # normalised: putting each of the 256 values at one position leaves that position's
    # distribution unchanged (causality) and the probabilities sum to 1
    for ch, i, j in [(0, 0, 0), (1, 1, 2), (2, 2, 2)]:
        every = x[:1].repeat(256, 1, 1, 1)
        every[:, ch, i, j] = torch.arange(256, dtype=torch.uint8)
        total = model.log_probs(every)[:, ch, i, j].exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-6)  # log_prob is float32
    # nll_bits = -sum_k log2 p(x_k | x_<k), each term from an input where x_>=k is noise
    independent = torch.zeros(2, dtype=torch.float64)
    c, h, w = shape
    for k in range(c * h * w):
        noisy = raster(torch.randint(0, 256, shape, dtype=torch.uint8)).repeat(2, 1)
        flat = torch.stack([raster(img) for img in x])
        noisy[:, :k] = flat[:, :k]
        noisy = noisy.view(2, h, w, c).permute(0, 3, 1, 2)
        i, rest = divmod(k, w * c)
        j, ch = divmod(rest, c)
        logits = model.logits(noisy).view(2, c, 256, h, w)[:, ch, :, i, j]
        independent -= torch.log_softmax(logits, -1)[torch.arange(2), flat[:, k].long()] / math.log(2)
    assert torch.allclose(model.nll_bits(x).double(), independent, rtol=1e-6)


def test_transformer_cache_gives_the_same_conditionals_as_the_full_pass():
    shape = (3, 4, 4)
    model = tiny("ar_transformer", shape)
    x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    cache, previous, steps = model.new_cache(3), None, []
    for value in torch.stack([raster(img) for img in x]).T:
        steps.append(torch.log_softmax(model.next_logits(cache, previous), -1))
        previous = value
    full = torch.log_softmax(model.logits(x).view(3, 3, 256, 4, 4), 2).permute(0, 3, 4, 1, 2).reshape(3, 48, 256)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-10)
    with pytest.raises(ValueError, match="already holds"):
        model.next_logits(cache, previous)


@pytest.mark.parametrize("name", list(TINY))
def test_sampling_is_reproducible_and_the_cached_path_matches_the_uncached_one(name):
    shape = (3, 4, 4) if name == "ar_transformer" else (1, 9, 9)  # 9x9: the conv window crops
    model = tiny(name, shape)
    with seeded(0):
        cached = AutoregressiveSampler().sample(model, 6)
    with seeded(0):
        again = AutoregressiveSampler().sample(model, 6)
    with seeded(0):
        uncached = AutoregressiveSampler(cache=False).sample(model, 6)
    with seeded(1):
        other = AutoregressiveSampler().sample(model, 6)
    assert cached.dtype == torch.uint8 and cached.shape == (6, *shape)
    assert torch.equal(cached, again) and torch.equal(cached, uncached)
    assert not torch.equal(cached, other)
    if name != "ar_transformer":
        assert model.rows_needed < 8  # the window really was smaller than the image


class RecordingSampler(AutoregressiveSampler):
    """Keeps the logits of every draw, in drawing order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        self.seen.append(logits.clone())
        return super().draw(logits)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 6, 5)], ids=["mnist", "rgb-non-square"])
@pytest.mark.parametrize("name", ["ar_transformer", "pixelcnn"])
def test_every_sampled_sub_pixel_is_drawn_from_the_teacher_forced_conditional(name, shape):
    # The logits the sampler draws each sub-pixel from (cache, window) are those of one full
    # teacher-forced pass over the finished sample, at every position of a 28x28 raster.
    model = tiny(name, shape)
    with torch.no_grad():  # weights large enough that each conditional depends on its context
        for p in model.parameters():
            p.normal_(0, 0.3)
    sampler = RecordingSampler()
    with seeded(0):
        x = sampler.sample(model, 3)
    c, h, w = shape
    full = model.logits(x).view(3, c, 256, h, w).permute(0, 3, 4, 1, 2).reshape(3, h * w * c, 256)
    drawn = torch.stack(sampler.seen, 1)
    assert drawn.shape == full.shape
    assert torch.allclose(drawn, full, rtol=0, atol=1e-9)
    assert len(x.unique()) > 20  # the conditionals are far from constant: a wrong context would show


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
def test_the_conv_sampling_window_gives_exact_logits_and_is_no_larger_than_needed(name):
    shape = (3, 13, 13)
    model = tiny(name, shape)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    full = model.logits(x).view(2, 3, 256, 13, 13)

    def window_logits(i, j, top, bottom, left, right):
        return model.logits(x[:, :, top:bottom, left:right]).view(2, 3, 256, bottom - top, right - left)[
            :, :, :, i - top, j - left]

    for i, j in [(12, 6), (9, 12), (10, 0), (2, 3)]:
        (top, bottom), (left, right) = model.window((i, j))
        assert torch.allclose(window_logits(i, j, top, bottom, left, right), full[:, :, :, i, j], rtol=0, atol=1e-12)
    # one row or one column less and the logits change: the reach is not overstated
    i, j = 12, 6
    (top, bottom), (left, right) = model.window((i, j))
    assert top > 0 and left > 0 and right < 13
    assert not torch.allclose(window_logits(i, j, top + 1, bottom, left, right), full[:, :, :, i, j], atol=1e-9)
    assert not torch.allclose(window_logits(i, j, top, bottom, left + 1, right), full[:, :, :, i, j], atol=1e-9)
    assert not torch.allclose(window_logits(i, j, top, bottom, left, right - 1), full[:, :, :, i, j], atol=1e-9)


def test_sampled_values_follow_the_model_distribution():
    # A position whose logits favour one value: temperature 0 takes it, temperature 1 draws
    # it about as often as the softmax says.
    model = tiny("pixelcnn", (1, 1, 1))
    with torch.no_grad():
        model.head.net[-1].bias.zero_()
        model.head.net[-1].weight.zero_()
        model.head.net[-1].bias[200] = math.log(3 * 255)  # p(200) = 3*255 / (3*255 + 255) = 0.75
    assert (AutoregressiveSampler(temperature=0).sample(model, 5) == 200).all()
    with seeded(0):
        draws = AutoregressiveSampler().sample(model, 4000)
    assert (draws == 200).float().mean().item() == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ConfigError, match="sampler.temperature"):
        AutoregressiveSampler(temperature=-1)


@pytest.mark.parametrize("name", list(TINY))
def test_conditional_samples_follow_the_class(name):
    model = tiny(name, (1, 4, 4), num_classes=10, conditional=True)
    sampler = AutoregressiveSampler()
    with seeded(0):
        threes = sampler.sample(model, 4, labels=torch.full((4,), 3))
    with seeded(0):
        sevens = sampler.sample(model, 4, labels=torch.full((4,), 7))
    assert not torch.equal(threes, sevens)
    sampler.classes = [2, 5]
    assert sampler.labels_for(model, 5).tolist() == [2, 5, 2, 5, 2]
    with pytest.raises(ValueError, match="class labels"):
        model.nll_bits(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_the_sampler_refuses_other_families_and_bad_configs_are_named():
    assert compatible_samplers("autoregressive") == ["autoregressive"]
    with pytest.raises(ConfigError, match=r"serves the families \['autoregressive'\].*'vae'.*sampler=prior"):
        AutoregressiveSampler().check(VAE((1, 8, 8)), compatible_samplers("vae"))
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        GatedPixelCNN((1, 8, 8), num_classes=0, conditional=True)
    with pytest.raises(ConfigError, match="model.kernel_size"):
        PixelCNN((1, 8, 8), kernel_size=4)
    with pytest.raises(ConfigError, match="model.channels"):
        PixelCNN((3, 8, 8), channels=4)
    with pytest.raises(ConfigError, match="model.dim=30 must be a multiple of model.heads=4"):
        ARTransformer((1, 8, 8), dim=30, heads=4)
    with pytest.raises(ConfigError, match="small images.*dataset.image_size"):
        ARTransformer((3, 64, 64))


# ----- through the entry points ----------------------------------------------------------
FAST = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=100",
        "callbacks.samples.n=8", "logger=none"]
SIZES = {
    "pixelcnn": ["model.channels=16", "model.blocks=2", "model.head_channels=32"],
    "ar_transformer": ["model.dim=32", "model.depth=2", "model.heads=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pixelcnn", "ar_transformer"])
def test_training_on_digits_learns_and_reports_exact_bits_per_dim(name, tmp_path, caplog):
    from genlab.train import train

    cfg = compose_cfg(overrides=[f"model={name}", *SIZES[name], *FAST, "callbacks.fid=null"], output_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        objective = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and objective == metrics["best"]["val/bpd"]
    # uniform is 8.0 and these untrained nets give 7.99 and 8.07 on digits; 46 steps go well below
    assert metrics["final"]["test/bpd"] < 7.0
    # the loss is the same exact quantity as bits/dim
    assert metrics["final"]["test/loss"] == pytest.approx(metrics["final"]["test/bpd"], rel=0.02)
    assert any("likelihood is exact" in r.message for r in caplog.records)
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2


@pytest.mark.slow
def test_conditional_gated_pixelcnn_experiment_trains_and_samples_chosen_classes(tmp_path):
    from genlab.sample import sample
    from genlab.train import train

    run = tmp_path / "run"
    train(compose_cfg(overrides=["experiment=autoregressive_digits", *FAST, "callbacks.fid.num_samples=100",
                                 "callbacks.fid.chunk_size=50"], output_dir=run))
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["test/bpd"] < 4.5 and math.isfinite(final["test/fid_classifier"])
    ckpt = run / "checkpoints" / "last.ckpt"
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=6", "classes=[3,7]"], output_dir=tmp_path / "s"))
    arrays = np.load(tmp_path / "s" / "samples.npz")
    assert arrays["labels"].tolist() == [3, 7, 3, 7, 3, 7]
    assert arrays["images"].shape == (6, 1, 8, 8) and arrays["images"].dtype == np.uint8


@pytest.mark.slow
def test_ddp_cpu_training(tmp_path):
    from test_ddp import run_cli

    run_cli("genlab.train", "hardware=ddp_cpu", "model=pixelcnn", *SIZES["pixelcnn"], "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=64", "callbacks.fid=null",
            "callbacks.samples.n=4", "logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["final"]["test/bpd"] < 8.0
