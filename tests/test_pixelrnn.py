"""PixelRNN: causality of both variants (gradients exactly zero for j >= i), the Row LSTM's blind
region and the Diagonal BiLSTM's wider context, and normalisation over every image of a tiny shape."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.pixelrnn import PixelRNN

from test_autoregressive import dependency

VARIANTS = ["row_lstm", "diagonal_bilstm"]


def tiny(variant: str, shape, first_kernel_size: int = 3) -> PixelRNN:
    torch.manual_seed(0)
    return PixelRNN(shape, variant=variant, channels=12, hidden=12, layers=2,
                    first_kernel_size=first_kernel_size, head_channels=24).double().eval()


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 4)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_never_depend_on_the_current_or_later_sub_pixels(variant, shape):
    deps = dependency(tiny(variant, shape), shape)  # [logit position, input position], raster order
    assert deps.triu().abs().max() == 0.0
    # and they do depend on the past: every sub-pixel but the first on something before it
    assert (deps[1:].sum(1) > 0).all()


def test_the_row_lstm_has_a_blind_region_the_diagonal_bilstm_sees():
    shape, w = (1, 5, 5), 5
    row, diagonal = (dependency(tiny(v, shape), shape) for v in VARIANTS)

    def blind(deps):
        return {(divmod(k, w), divmod(j, w)) for k in range(deps.shape[0]) for j in range(k) if deps[k, j] == 0}

    row_blind, diagonal_blind = blind(row), blind(diagonal)
    # Row LSTM: a triangle above each pixel; (2, 0) does not see the upper right of row 0
    assert ((2, 0), (0, 4)) in row_blind and ((2, 0), (1, 3)) in row_blind
    # and within the row only as far left as its 1 x 3 convolutions reach (1 + 2 layers)
    assert ((0, 4), (0, 0)) in row_blind
    assert diagonal_blind < row_blind
    # The Diagonal BiLSTM misses only the last pixel of the row above, for pixels left of where
    # the mask-A input convolution (3 x 3 here) reaches it: the right-to-left LSTM, shifted
    # down a row, carries every other pixel of that row.
    assert diagonal_blind == {((i, j), (i - 1, w - 1)) for i in range(1, 5) for j in range(w - 2)}


@pytest.mark.parametrize("shape, first_kernel_size, layers", [((1, 3, 6), 5, 3), ((3, 2, 5), 3, 3)])
def test_the_diagonal_bilstm_miss_is_the_papers_own_and_depth_does_not_close_it(shape, first_kernel_size, layers):
    """The paper's construction (van den Oord et al., 2016, sec. 3.2), not genlab's skew: no
    feature of row i-1 ever holds the last sub-pixel of that row (causality: a feature at (r, c)
    holds only what comes before (r, c)), so the right-to-left map shifted down cannot bring it
    to row i; it enters row i only through the mask-A convolution, at columns >= w-1-k//2, and
    within a row information moves only rightwards. Whatever the depth, (i, j) misses the last
    sub-pixel of row i-1 (the last channel of a colour image: the others are in that pixel's
    own later-channel features) exactly for j < w-1-k//2, and sees every other earlier one."""
    c, h, w = shape
    torch.manual_seed(0)
    model = PixelRNN(shape, variant="diagonal_bilstm", channels=12, hidden=12, layers=layers,
                     first_kernel_size=first_kernel_size, head_channels=24).double().eval()
    deps = dependency(model, shape)  # rows and columns: (i * w + j) * c + channel

    def position(k):
        (i, j), channel = divmod(k // c, w), k % c
        return i, j, channel

    blind = {(position(k), position(m)) for k in range(deps.shape[0]) for m in range(k) if deps[k, m] == 0}
    reach = w - 1 - first_kernel_size // 2
    assert blind == {((i, j, ch), (i - 1, w - 1, c - 1)) for i in range(1, h) for j in range(reach) for ch in range(c)}


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
