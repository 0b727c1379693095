"""The diffusion UNet depends on its inputs: the output changes with the timestep and, for a
class-conditional net, with the class, at every size a config can produce (issue 13: the
embedding used to be a bias that the next GroupNorm removed at 16 and 32 channels)."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from genlab.config import instantiate
from genlab.errors import ConfigError
from genlab.models.diffusion import DDPM
from genlab.nets.unet import MIN_GROUP_CHANNELS, ResBlock, UNet, norm_groups

from conftest import compose_cfg

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("ddpm_*.yaml"))
#: widths beside the configs' own (digits-sized: 8x8, two levels)
WIDTHS = [8, 16, 24, 32, 48, 64]


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def sensitivities(net: UNet, shape: tuple[int, int, int], conditional: bool, n: int = 2) -> tuple[float, float]:
    """(t=10 against t=900, class 3 against class 7) relative changes of the output, same inputs."""
    torch.manual_seed(1)
    x = torch.randn(n, *shape)
    y3, y7 = (torch.full((n,), 3), torch.full((n,), 7)) if conditional else (None, None)
    with torch.no_grad():
        at10 = net(x, torch.full((n,), 10), y3)
        by_t = relative_change(at10, net(x, torch.full((n,), 900), y3))
        by_class = relative_change(at10, net(x, torch.full((n,), 10), y7)) if conditional else float("nan")
    return by_t, by_class


def config_nets() -> list:
    """model=ddpm (on digits) and every ddpm experiment, as configured: (id, overrides)."""
    return [pytest.param(["model=ddpm"], id="model=ddpm"),
            *(pytest.param([f"experiment={name}"], id=name) for name in EXPERIMENTS)]


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("overrides", config_nets())
def test_every_configured_unet_depends_on_t_and_the_class(overrides, conditional):
    cfg = compose_cfg(overrides=[*overrides, f"model.conditional={str(conditional).lower()}"])
    model = instantiate(cfg.model, "model").eval()
    # the embedding enters after every norm it feeds or, before one, with several channels a group
    for block in model.net.modules():
        if isinstance(block, ResBlock):
            assert block.scale_shift_norm or block.norm2.num_channels // block.norm2.num_groups >= MIN_GROUP_CHANNELS
    by_t, by_class = sensitivities(model.net, model.data_shape, conditional)
    assert by_t > 0.02, f"t=10 and t=900 give outputs only {by_t:.1e} apart"
    if conditional:
        assert by_class > 0.02, f"classes 3 and 7 give outputs only {by_class:.1e} apart"


@pytest.mark.parametrize("scale_shift_norm", [True, False], ids=["scale_shift", "bias"])
@pytest.mark.parametrize("width", WIDTHS)
def test_unets_of_other_widths_depend_on_t_and_the_class(width, scale_shift_norm):
    torch.manual_seed(0)
    net = UNet(1, 8, width, (1, 2), 1, (4,), 0.0, num_classes=10, scale_shift_norm=scale_shift_norm).eval()
    by_t, by_class = sensitivities(net, (1, 8, 8), conditional=True)
    assert by_t > 0.02 and by_class > 0.02, (by_t, by_class)


def test_group_norms_hold_several_channels_per_group():
    assert [norm_groups(c) for c in (16, 24, 32, 48, 64, 128, 192, 256)] == [4, 6, 8, 12, 16, 32, 32, 32]
    for c in range(1, 600):
        g = norm_groups(c)
        assert c % g == 0 and g <= 32 and (c // g >= MIN_GROUP_CHANNELS or g == 1)


def test_each_residual_block_passes_its_embedding_through_the_norm_at_16_channels():
    # The regression: at 16 channels the old GroupNorm(gcd(32, 16) = 16 groups) held one channel
    # per group and subtracted the embedding the block had just added, so d(out)/d(emb) was 0.
    torch.manual_seed(0)
    block = ResBlock(16, 16, emb_dim=64, dropout=0.0)
    x = torch.randn(4, 16, 8, 8)
    emb = torch.randn(4, 64, requires_grad=True)
    out = block(x, emb)
    (grad,) = torch.autograd.grad(out.square().sum(), emb)
    assert grad.norm() / out.detach().norm() > 1e-2
    with torch.no_grad():
        assert relative_change(out, block(x, torch.randn(4, 64))) > 0.05


def test_the_bias_placement_needs_several_channels_per_group():
    with pytest.raises(ConfigError, match="model.scale_shift_norm=false.*model.channels=2"):
        DDPM((1, 8, 8), channels=2, channel_mult=(1, 2), scale_shift_norm=False)


@pytest.mark.slow
def test_a_briefly_trained_conditional_unet_depends_on_t_and_the_class(tmp_path):
    # The shipped digits net (16 channels) trained 40 steps on the digits, with label dropout.
    cfg = compose_cfg(overrides=["experiment=ddpm_digits", "model.conditional=true"], output_dir=tmp_path)
    pl.seed_everything(0)
    model = instantiate(cfg.model, "model")
    datamodule = instantiate(cfg.dataset, "dataset")
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    model.eval()
    # real inputs: noisy test digits at t = 500
    x0 = torch.stack([datamodule.split_dataset("test")[i][0] for i in range(64)]).float() / 127.5 - 1
    torch.manual_seed(0)
    xt = model.q_sample(x0, torch.full((64,), 500), torch.randn_like(x0))
    y3, y7 = torch.full((64,), 3), torch.full((64,), 7)
    with torch.no_grad():
        at10 = model.net(xt, torch.full((64,), 10), y3)
        by_t = relative_change(at10, model.net(xt, torch.full((64,), 900), y3))
        by_class = relative_change(at10, model.net(xt, torch.full((64,), 10), y7))
    # measured 0.08 and 0.12; the old placement gave ~1e-7 for both
    assert by_t > 0.02 and by_class > 0.02, (by_t, by_class)
