"""WaveNet and WaveGlow at tiny sizes: causality, exact normalisation, the step cache, invertibility,
the log-determinant, the dequantization convention, vocoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.wavenet import WaveNet
from genlab.modalities.audio import mu_law_decode, mu_law_encode
from genlab.models.waveglow import WaveGlow
from genlab.nets.waveglow import squeeze_audio, unsqueeze_audio
from genlab.samplers.autoregressive import AutoregressiveSampler
from genlab.samplers.vocoder import VocoderSampler
from genlab.utils import seeded

TINY_WAVENET = dict(channels=6, skip_channels=8, layers_per_stack=3, stacks=2)
TINY_WAVEGLOW = dict(n_mels=8, n_fft=32, hop_length=8, groups=4, steps=3, hidden=6, layers=2)


def randomize_(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Perturb every parameter, zero-initialised output layers included, so nothing is trivially
    the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("conditional", [False, True])
def test_wavenet_output_t_is_independent_of_inputs_at_and_after_t(conditional):
    torch.manual_seed(0)
    model = WaveNet([1, 40], num_classes=3, conditional=conditional, **TINY_WAVENET)
    x = torch.randint(0, 256, (2, 1, 40), dtype=torch.uint8)
    y = torch.tensor([0, 2]) if conditional else None
    h = model.embed(x).detach().requires_grad_(True)
    logits = model.logits_from_embedded(h, y)
    for t in (0, 7, 20, 39):
        (grad,) = torch.autograd.grad(logits[:, :, t].sum(), h, retain_graph=True)
        reach = grad.abs().sum((0, 1))
        assert torch.all(reach[t:] == 0), f"output {t} depends on inputs {torch.nonzero(reach[t:]).flatten() + t}"
        # and it sees exactly the receptive field before t (what a sampling window may crop to)
        assert reach[max(0, t - model.receptive_field):t].gt(0).all()
        assert torch.all(reach[:max(0, t - model.receptive_field)] == 0)


@pytest.mark.parametrize("conditional", [False, True])
def test_wavenet_probabilities_of_all_sequences_sum_to_one(conditional):
    torch.manual_seed(1)
    model = WaveNet([1, 3], vocab_size=4, num_classes=2, conditional=conditional, **TINY_WAVENET).double()
    randomize_(model, 1.0)
    every = torch.tensor(list(itertools.product(range(4), repeat=3)), dtype=torch.uint8)[:, None]  # 64 x [1, 3]
    for label in (0, 1) if conditional else (None,):
        y = None if label is None else torch.full((64,), label)
        log2_p = -model.nll_bits(every, y)
        assert torch.exp2(log2_p).sum().item() == pytest.approx(1.0, abs=1e-5)
        assert log2_p.std() > 0.1  # not the uniform distribution


def test_wavenet_step_cache_gives_the_conditionals_of_the_full_pass():
    torch.manual_seed(2)
    model = WaveNet([1, 50], num_classes=3, conditional=True, **TINY_WAVENET).eval()
    x = torch.randint(0, 256, (3, 1, 50), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = model.logits(x, y)
        cache, previous, steps = model.new_cache(3), None, []
        for t in range(50):
            steps.append(model.next_logits(cache, previous, y))
            previous = x[:, 0, t]
        with pytest.raises(ValueError, match="already holds all 50"):
            model.next_logits(cache, previous, y)
    assert torch.allclose(torch.stack(steps, -1), full, atol=1e-5)


def test_wavenet_refuses_images_and_multichannel_audio_naming_the_fix():
    with pytest.raises(ConfigError, match=r"dataset.data_shape=\[1, 8, 8\] has 3 axes"):
        WaveNet([1, 8, 8])
    with pytest.raises(ConfigError, match=r"mono audio of data_shape \[1, T\].*dataset=fsdd"):
        WaveNet([2, 100])


@pytest.mark.parametrize("conditional", [False, True])
def test_wavenet_cached_and_uncached_samples_are_identical_for_a_seed(conditional):
    torch.manual_seed(6)
    # float64: the two paths sum in different orders, and in float32 their logits differ by ~1e-6,
    # which flips a draw whose uniform falls that close to a CDF step (seed 0 did, at one thread)
    model = WaveNet([1, 40], num_classes=3, conditional=conditional, **TINY_WAVENET).double().eval()
    randomize_(model, 0.5)  # peaked conditionals: a wrong cache would change many samples
    labels = torch.tensor([0, 1, 2, 0]) if conditional else None
    draws = {}
    for name, cache, seed in (("cached", True, 0), ("uncached", False, 0), ("again", True, 0), ("other", True, 1)):
        with seeded(seed):
            draws[name] = AutoregressiveSampler(cache=cache).sample(model, 4, labels)
    assert draws["cached"].dtype == torch.uint8 and draws["cached"].shape == (4, 1, 40)
    assert torch.equal(draws["cached"], draws["uncached"]) and torch.equal(draws["cached"], draws["again"])
    assert not torch.equal(draws["cached"], draws["other"])
    assert len(draws["cached"].unique()) > 10


def test_wavenet_window_is_the_receptive_field_and_gives_exact_logits():
    torch.manual_seed(7)
    model = WaveNet([1, 80], **TINY_WAVENET).eval()
    x = torch.randint(0, 256, (2, 1, 80), dtype=torch.uint8)
    with torch.no_grad():
        full = model.logits(x)
        for t in (0, 5, model.receptive_field, 79):
            (start, stop), = model.window((t,))
            assert stop == t + 1 and start == max(0, t - model.receptive_field)
            assert torch.allclose(model.logits(x[:, :, start:stop])[:, :, -1], full[:, :, t], atol=1e-5)


def random_waveglow64(clips: int, seed: int) -> tuple[WaveGlow, torch.Tensor, torch.Tensor]:
    """A randomized float64 WaveGlow on clips of 32 samples, dequantized clips u and their mels."""
    torch.manual_seed(seed)
    model = WaveGlow([1, 32], **TINY_WAVEGLOW).double()
    randomize_(model.flow, 0.1)
    model.flow.actnorm.initialized.fill_(True)
    x = torch.randint(0, 256, (clips, 1, 32), dtype=torch.uint8)
    return model.eval(), model.dequantize(x), model.condition(x)


def test_waveglow_inverse_of_forward_is_the_identity_in_float64():
    model, u, cond = random_waveglow64(4, seed=3)
    z, _ = model.flow(squeeze_audio(u, 4), cond)
    assert not torch.allclose(unsqueeze_audio(z, 4), u, atol=0.01)  # the flow does something
    assert torch.allclose(unsqueeze_audio(model.flow.inverse(z, cond), 4), u, atol=1e-5, rtol=0)
    assert (unsqueeze_audio(model.flow.inverse(z, cond), 4) - u).abs().max() < 1e-12


def test_waveglow_log_determinant_equals_the_autograd_jacobian():
    model, u, cond = random_waveglow64(1, seed=4)
    _, logdet = model.flow(squeeze_audio(u, 4), cond)

    def f(flat: torch.Tensor) -> torch.Tensor:
        return model.flow(squeeze_audio(flat.view(1, 1, 32), 4), cond)[0].flatten()

    jacobian = torch.autograd.functional.jacobian(f, u.flatten())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0 and abs(expected.item()) > 0.5
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-8)


def test_waveglow_conditions_on_a_standardised_mel_so_the_gates_start_unsaturated():
    """The raw log mel is about -11.5 in silence: fed as it is, the conditioning alone put most
    gates of the coupling networks into saturation at the start (tanh near +-1, no gradient). The
    first training batch standardises each mel band; the scale is then fixed and saved."""
    torch.manual_seed(0)
    model = WaveGlow([1, 512], n_mels=8, n_fft=64, hop_length=16, groups=4, steps=1, hidden=16, layers=1)
    t = torch.arange(512) / 8000
    loudness = torch.linspace(0, 1, 6)[:, None] ** 2  # from silence to loud
    x = mu_law_encode(loudness * torch.sin(2 * torch.pi * 440 * t) + 0.01 * torch.randn(6, 512)).unsqueeze(1)
    model.train()
    model.nll_bits(x)  # the first training batch
    frames = model.mel_norm(model.mel(mu_law_decode(x[:, 0]))[..., None])[0]  # [B, mel band, frames, 1]
    assert frames.mean((0, 2, 3)).abs().max() < 1e-4 and (frames.std((0, 2, 3), correction=0) - 1).abs().max() < 0.02
    gates = model.flow.couplings[0].net.layers[0].cond(model.condition(x))
    assert (torch.tanh(gates).abs() > 0.95).float().mean() < 0.05
    state = model.state_dict()
    assert bool(state["mel_norm.initialized"]) and not any(p.requires_grad for p in model.mel_norm.parameters())
    fresh = WaveGlow([1, 512], n_mels=8, n_fft=64, hop_length=16, groups=4, steps=1, hidden=16, layers=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.eval().condition(x), model.eval().condition(x))


def test_waveglow_conditioning_is_aligned_with_the_samples():
    """Frame k of the (centred) mel-spectrogram describes the audio about sample k * hop_length:
    upsampled to the samples, a click at sample 256 is loudest in the conditioning at sample 256
    (stretching the frames over the clip's length put it 23 samples late)."""
    model = WaveGlow([1, 2048], n_mels=8, n_fft=256, hop_length=64, groups=4, steps=1, hidden=4, layers=1).eval()
    wave = torch.zeros(1, 2048)
    wave[0, 256] = 1.0
    cond = model.condition(mu_law_encode(wave).unsqueeze(1)).view(1, 8, 4, 512)  # [B, band, position in group, L]
    loudness = cond.sum(1)[0].T.flatten()  # back to sample order
    assert abs(int(loudness.argmax()) - 256) <= 2


class UniformBase(WaveGlow):
    """WaveGlow's bijection with a uniform base density on [0, 1)^T instead of N(0, I)."""

    def base_log_prob(self, z):
        inside = ((z >= 0) & (z < 1)).flatten(1).all(1)
        return torch.where(inside, 0.0, -math.inf).to(z.dtype)


def test_identity_waveglow_with_a_uniform_base_is_exactly_8_bits_per_sample():
    # fresh couplings are zero and there is no actnorm or 1x1 mixing: the flow only reorders samples
    model = UniformBase([1, 64], actnorm=False, invconv=False, **TINY_WAVEGLOW).eval()
    x = torch.randint(0, 256, (8, 1, 64), dtype=torch.uint8)
    x[0], x[1] = 255, 0
    assert torch.equal(model.nll_bits(x) / model.num_dims, torch.full((8,), 8.0))


def test_vocoding_draws_for_the_stored_held_out_clips_and_refuses_without_them():
    torch.manual_seed(5)
    model = WaveGlow([1, 64], **TINY_WAVEGLOW, num_classes=10, references=3).eval()
    sampler = VocoderSampler(temperature=0.0)
    with pytest.raises(ConfigError, match="no reference clips"):
        sampler.sample(model, 2)
    clips = torch.randint(0, 256, (3, 1, 64), dtype=torch.uint8)
    model.references.copy_(clips)
    model.reference_labels.copy_(torch.tensor([7, 3, 9]))
    model.references_filled.fill_(True)
    assert torch.equal(model.conditioning_clips(5)[0], clips[[0, 1, 2, 0, 1]])
    # a metric's chunks are consecutive runs of the series: chunk 2..5 vocodes clips 2, 0, 1, 2 and
    # says they are meant to be of those clips' labels (what class_acc compares the classifier with)
    assert sampler.labelled(model)
    chunk, labels = sampler.sample_series(model, 2, 6)
    assert chunk.shape == (4, 1, 64) and labels.tolist() == [9, 7, 3, 9]
    assert torch.equal(model.conditioning_clips(4, 2)[0], clips[[2, 0, 1, 2]])
    samples = sampler.sample(model, 5)
    assert samples.dtype == torch.uint8 and samples.shape == (5, 1, 64)
    # a fresh flow with actnorm at identity maps z = 0 to u = 0: every sample at the lowest value
    assert torch.equal(samples, torch.zeros_like(samples))
    hot = VocoderSampler(temperature=1.0).sample(model, 5)
    assert hot.float().std() > 0
    with pytest.raises(ConfigError, match="sampler.temperature"):
        VocoderSampler(temperature=-1)
