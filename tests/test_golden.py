"""Image numbers fixed to their values before the modality-neutral refactor (issue 12).

Seeded tiny models of several families, built from their configs, measured on fixed digits:
``nll_bits`` and a seeded sample must stay what they were when models took ``image_shape``.
The values below were printed by this very test (``GOLDEN_PRINT=1``) at commit 8cc0f10.
"""

import os

import pytest
import torch

from genlab.config import build_sampler, instantiate
from genlab.data import DigitsDataModule
from genlab.utils import seeded

from conftest import compose_cfg

CASES = {
    "vae": ["model=vae", "model.channels=[8,16]", "model.latent_dim=4", "model.iw_samples=4"],
    "pixelcnn": ["model=pixelcnn", "model.channels=8", "model.blocks=1", "model.head_channels=16"],
    "gated_pixelcnn": ["model=gated_pixelcnn", "model.channels=8", "model.layers=2", "model.head_channels=16",
                       "model.conditional=true"],
    "pixelcnn_uncached": ["model=pixelcnn", "model.channels=8", "model.blocks=1", "model.head_channels=16",
                          "sampler.cache=false"],
    "ar_transformer": ["model=ar_transformer", "model.dim=16", "model.depth=1", "model.heads=2"],
    "glow": ["model=glow", "model.hidden=8", "model.steps=2"],
    "realnvp": ["model=realnvp", "model.hidden=8", "model.steps=2", "model.blocks=1"],
    "ddpm": ["model=ddpm", "model.channels=8", "model.timesteps=50", "model.bound_timesteps=3",
             "sampler.steps=3"],
    "dcgan": ["model=dcgan", "model.g_width=8", "model.d_width=8", "model.latent_dim=8"],
}

# name: (sum of nll_bits over the 8 digits or None, sum of the 4 samples' values, weighted checksum)
GOLDEN = {
    "ar_transformer": (4079.6828002929688, 31254, 96143),
    "dcgan": (None, 31636, 61567),
    "ddpm": (4493.178558349609, 31815, 314151),
    "gated_pixelcnn": (4227.708190917969, 31415, 115728),
    "glow": (5077.500183105469, 33144, 258642),
    "pixelcnn": (4220.59619140625, 31614, 143109),
    "pixelcnn_uncached": (4220.59619140625, 31614, 143109),
    "realnvp": (5077.500183105469, 33353, 316245),
    "vae": (2497.0558166503906, 34085, 380548),
}


def measure(name: str) -> tuple:
    cfg = compose_cfg(overrides=[*CASES[name], "logger=none"])
    with seeded(0):
        model = instantiate(cfg.model, "model").eval()
    sampler = build_sampler(cfg.sampler, model)
    data = DigitsDataModule().split_dataset("test")
    x = torch.stack([data[i][0] for i in range(8)])
    y = torch.tensor([data[i][1] for i in range(8)])
    nll = None
    if model.likelihood is not None:
        with seeded(1), torch.no_grad():
            nll = float(model.nll_bits(x, y if model.conditional else None).double().sum())
    with seeded(2):
        s = sampler.sample(model, 4).long()
    weights = torch.arange(1, s.numel() + 1).view(s.shape)
    return nll, int(s.sum()), int((s * weights).sum() % 1_000_003)


@pytest.mark.parametrize("name", sorted(CASES))
def test_image_numbers_are_what_they_were_before_the_modality_refactor(name):
    nll, total, checksum = measure(name)
    if os.environ.get("GOLDEN_PRINT"):
        print(f'    "{name}": ({nll!r}, {total}, {checksum}),')
        return
    want_nll, want_total, want_checksum = GOLDEN[name]
    if want_nll is None:
        assert nll is None
    else:
        assert nll == pytest.approx(want_nll, rel=1e-6)
    assert (total, checksum) == (want_total, want_checksum)
