"""Latent directions and manifolds (genlab.latents) through the encoder primitives of the families."""

import pytest
import torch

from genlab.errors import ConfigError
from genlab.latents import latent_direction, move_along, parse_direction
from genlab.models.base import GenerativeModel

from conftest import compose_cfg


class LabelAlignedToy(GenerativeModel):
    """A latent that is the image itself: class k lights pixel k, so the latent is aligned with the labels."""

    family, has_encoder = "toy", True

    def encode_mean(self, x, y=None):
        return x.flatten(1).float()

    def decode_latent(self, z, y=None):
        return z.round().clamp(0, 255).to(torch.uint8).view(len(z), *self.data_shape)


def test_the_direction_is_the_difference_of_the_class_means():
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randint(0, 40, (60, 1, 2, 2), generator=generator, dtype=torch.uint8)
    x.view(60, 4)[torch.arange(60), y] += 200  # class k: pixel k bright
    model = LabelAlignedToy((1, 2, 2), num_classes=3)
    direction = latent_direction(model, x, y, 0, 2, chunk=7)  # chunks of 7: the mean is over all of them
    by_hand = x[y == 2].double().mean(0).flatten() - x[y == 0].double().mean(0).flatten()
    assert torch.allclose(direction.double(), by_hand, atol=1e-5)
    assert direction[2] > 150 and direction[0] < -150 and abs(direction[1]) < 20  # bright pixel 0 -> pixel 2
    moved = move_along(model, x[:1], y[:1], direction, torch.tensor([0.0, 1.0]))
    assert torch.equal(moved[0], x[0])
    assert torch.equal(moved[1], (x[0].float() + direction.view(1, 2, 2)).round().clamp(0, 255).to(torch.uint8))


def test_direction_labels_are_checked():
    assert parse_direction("3:8", 10) == (3, 8)
    for bad, match in (("3-8", "direction=A:B"), ("3:10", r"labels: 0\.\.9"), ("4:4", "two different")):
        with pytest.raises(ConfigError, match=match):
            parse_direction(bad, 10)
    with pytest.raises(ConfigError, match="unlabelled"):
        parse_direction("0:1", 0)


def test_a_flow_decodes_its_own_latents_back_to_the_image():
    from genlab.config import instantiate

    flow = instantiate(compose_cfg(overrides=["model=glow"]).model, "model").eval()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        z = flow.encode_mean(x)
        assert z.shape == (4, flow.latent_dim) == (4, 64)
        assert torch.equal(flow.decode_latent(z), x)
