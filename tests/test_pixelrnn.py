"""PixelRNN: causality of both variants (gradients exactly zero for j >= i), the Row LSTM's blind
region, the Diagonal BiLSTM's whole causal context (and the image path that completes it), and
normalisation over every image of a tiny shape."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.pixelrnn import PixelRNN

from test_autoregressive import dependency

VARIANTS = ["row_lstm", "diagonal_bilstm"]


def tiny(variant: str, shape, first_kernel_size: int = 3, layers: int = 2, seed: int = 0) -> PixelRNN:
    # 8 units per colour group: with 4, a whole group's ReLUs in the head can be dead at random
    # init, which zeroes a logit's gradients (an artefact of the init, not of the wiring)
    torch.manual_seed(seed)
    return PixelRNN(shape, variant=variant, channels=24, hidden=24, layers=layers,
                    first_kernel_size=first_kernel_size, head_channels=48).double().eval()


def receptive_field(model, shape) -> torch.Tensor:
    """``dependency`` summed over two random images: what the logits depend on at all (at one
    image a ReLU can happen to be off everywhere a dependence runs through)."""
    return dependency(model, shape) + dependency(model, shape)


def position(k: int, shape) -> tuple[int, int, int]:
    """(row, column, channel) of raster index k."""
    c, _, w = shape
    (i, j), channel = divmod(k // c, w), k % c
    return i, j, channel


def missed(deps: torch.Tensor, shape) -> set:
    """(logit position, earlier input position) pairs with no dependence at all."""
    return {(position(k, shape), position(m, shape)) for k in range(deps.shape[0]) for m in range(k) if deps[k, m] == 0}


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 4)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_never_depend_on_the_current_or_later_sub_pixels(variant, shape):
    deps = dependency(tiny(variant, shape), shape)  # [logit position, input position], raster order
    assert deps.triu().abs().max() == 0.0
    # and they do depend on the past: every sub-pixel but the first on something before it
    assert (deps[1:].sum(1) > 0).all()


def test_the_row_lstm_has_a_blind_region_the_diagonal_bilstm_does_not():
    shape = (1, 5, 5)
    row_blind = missed(receptive_field(tiny("row_lstm", shape), shape), shape)
    # Row LSTM: a triangle above each pixel; (2, 0) does not see the upper right of row 0
    assert ((2, 0, 0), (0, 4, 0)) in row_blind and ((2, 0, 0), (1, 3, 0)) in row_blind
    # and within the row only as far left as its 1 x 3 convolutions reach (1 + 2 layers)
    assert ((0, 4, 0), (0, 0, 0)) in row_blind
    assert missed(receptive_field(tiny("diagonal_bilstm", shape), shape), shape) == set()


@pytest.mark.parametrize("shape, first_kernel_size, layers", [
    ((1, 5, 5), 3, 2), ((1, 3, 6), 5, 3), ((1, 4, 1), 3, 1),
    ((3, 3, 4), 3, 2), ((3, 2, 5), 3, 3), ((3, 1, 3), 5, 1),
])
def test_the_diagonal_bilstm_sees_the_whole_causal_context(shape, first_kernel_size, layers):
    """Every earlier pixel in raster order and the earlier channels of the same pixel (R -> G
    -> B), at any depth and input kernel size, and nothing else: the right-to-left LSTM's output
    is shifted down a row, so the first layer gives its gates the whole current pixel (every
    channel), which only later rows receive."""
    deps = receptive_field(tiny("diagonal_bilstm", shape, first_kernel_size, layers), shape)
    assert deps.triu().abs().max() == 0.0  # j >= i: exactly zero
    assert missed(deps, shape) == set()


@pytest.mark.parametrize("shape, first_kernel_size", [((1, 3, 6), 5), ((3, 2, 5), 3)])
def test_without_the_image_in_the_right_to_left_gates_the_last_pixel_of_the_row_above_is_missed(shape, first_kernel_size):
    """What the image path closes: with its weights zeroed, no feature of row i-1 holds the last
    sub-pixel of that row (a masked feature at (r, c) holds only what precedes (r, c)), so it
    reaches row i only through the mask-A input convolution, at columns >= w-1-k//2, and (i, j)
    misses it for every j left of that, for every channel (the pixel's other channels are in its
    own later-channel features)."""
    c, h, w = shape
    model = tiny("diagonal_bilstm", shape, first_kernel_size, layers=3)
    with torch.no_grad():
        model.layers[0].pixels_to_backward.weight.zero_()
    deps = receptive_field(model, shape)
    assert deps.triu().abs().max() == 0.0
    reach = w - 1 - first_kernel_size // 2
    assert missed(deps, shape) == {((i, j, ch), (i - 1, w - 1, c - 1)) for i in range(1, h) for j in range(reach) for ch in range(c)}


@pytest.mark.parametrize("variant, shape", [("row_lstm", (1, 2, 1)), ("diagonal_bilstm", (1, 1, 2))])
def test_probabilities_of_every_image_of_a_tiny_shape_sum_to_one(variant, shape):
    torch.manual_seed(0)
    model = PixelRNN(shape, variant=variant, channels=4, hidden=4, layers=1, first_kernel_size=3,
                     head_channels=8).eval()
    values = torch.tensor(list(itertools.product(range(256), repeat=2)), dtype=torch.uint8)
    images = values.view(-1, *shape)
    with torch.no_grad():
        bits = model.nll_bits(images)
    total = torch.logsumexp(-bits.double() * math.log(2.0), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_an_unknown_variant_is_named():
    with pytest.raises(ConfigError, match="model.variant='gru'"):
        PixelRNN((1, 4, 4), variant="gru")
