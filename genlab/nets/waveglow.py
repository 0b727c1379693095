"""WaveGlow blocks (Prenger et al., 2019): a flow over groups of audio samples conditioned on a
mel-spectrogram.

A clip [B, 1, T] is squeezed into ``groups`` channels, [B, g, T/g, 1] (the image flows' 4-D layout,
so that ``genlab.nets.flows``' invertible 1x1 convolution and actnorm apply as they are); each step
mixes the channels with an invertible 1x1 convolution, then an affine coupling transforms half of
them with a scale and shift computed by a non-causal WaveNet stack from the other half and the
upsampled mel-spectrogram.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
from torch import Tensor

from genlab.nets.flows import ActNorm, FlowInverseError, InvConv1x1, soft_bound
from genlab.nets.wavenet import WaveNetStack


def squeeze_audio(x: Tensor, groups: int) -> Tensor:
    """[B, C, T] -> [B, C*g, T/g, 1]: each run of g consecutive samples becomes g channels."""
    b, c, t = x.shape
    return x.view(b, c, t // groups, groups).transpose(2, 3).reshape(b, c * groups, t // groups, 1)


def unsqueeze_audio(z: Tensor, groups: int) -> Tensor:
    """The inverse of ``squeeze_audio``."""
    b, cg, length, _ = z.shape
    return z.view(b, cg // groups, groups, length).transpose(2, 3).reshape(b, cg // groups, length * groups)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular filters [n_freqs, n_mels] on the HTK mel scale from 0 Hz to Nyquist, unnormalised
    (what ``torchaudio.functional.melscale_fbanks`` computes with its defaults; torchaudio is not a
    dependency of genlab)."""
    def mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    top = mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    edges = 700.0 * (10 ** (torch.linspace(0, float(top), n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


class LogMel(nn.Module):
    """Waveforms [B, T] in [-1, 1] -> log mel power spectrogram [B, n_mels, T // hop + 1]."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True).abs().pow(2)
        return torch.log(torch.einsum("fm,bft->bmt", self.filters, spec).clamp(min=1e-5))


class MelCoupling(nn.Module):
    """Affine coupling: the first half ``a`` of the channels passes; the rest becomes
    ``b * exp(s) + t``, (s, t) = WN(a, mel), ``s`` bounded by ``scale_bound`` (tanh). The
    network's last layer starts at zero, so a new coupling is the identity."""

    def __init__(self, channels: int, cond_channels: int, hidden: int, layers: int, kernel_size: int,
                 scale_bound: float) -> None:
        super().__init__()
        self.keep, self.scale_bound = channels // 2, scale_bound
        self.net = WaveNetStack(self.keep, 2 * (channels - self.keep), hidden, hidden,
                                [2**i for i in range(layers)], kernel_size, cond_channels,
                                causal=False, zero_out=True)

    def _params(self, a: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(a[..., 0], cond)[..., None].chunk(2, dim=1)
        return soft_bound(raw, self.scale_bound), shift

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.keep], x[:, self.keep:]
        s, t = self._params(a, cond)
        return torch.cat([a, b * torch.exp(s) + t], 1), s.flatten(1).sum(1)

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        a, b = y[:, : self.keep], y[:, self.keep:]
        s, t = self._params(a, cond)
        return torch.cat([a, (b - t) * torch.exp(-s)], 1)


class WaveGlowFlow(nn.Module):
    """[actnorm], then ``steps`` x (invertible 1x1 convolution, mel-conditioned affine coupling) on
    squeezed audio [B, g, L, 1]; ``cond`` is [B, cond_channels, L]."""

    def __init__(self, groups: int, cond_channels: int, steps: int, hidden: int, layers: int,
                 kernel_size: int = 3, scale_bound: float = 2.0, actnorm: bool = True, invconv: bool = True) -> None:
        super().__init__()
        if groups < 2:
            raise ValueError(f"a coupling needs at least 2 channels: groups={groups}")
        self.actnorm = ActNorm(groups) if actnorm else None
        self.mixers = nn.ModuleList(InvConv1x1(groups, lu=True, seed=k) if invconv else nn.Identity()
                                    for k in range(steps))
        self.couplings = nn.ModuleList(MelCoupling(groups, cond_channels, hidden, layers, kernel_size, scale_bound)
                                       for _ in range(steps))

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (z, log|det dz/dx|), one log-det per example."""
        logdet = x.new_zeros(x.shape[0])
        if self.actnorm is not None:
            x, logdet = self.actnorm(x)
        for mixer, coupling in zip(self.mixers, self.couplings):
            if isinstance(mixer, InvConv1x1):
                x, ld = mixer(x)
                logdet = logdet + ld
            x, ld = coupling(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor) -> Tensor:
        """z -> x; stops with FlowInverseError naming the step where values stop being finite."""
        for index in reversed(range(len(self.couplings))):
            z = self.couplings[index].inverse(z, cond)
            mixer = self.mixers[index]
            z = mixer.inverse(z) if isinstance(mixer, InvConv1x1) else z
            if not torch.isfinite(z).all():
                raise FlowInverseError(
                    f"inverting WaveGlow gave NaN/inf values at step {index}: the latents are out of the "
                    "range the model was trained on or the weights have diverged. Lower "
                    "sampler.temperature, or use an earlier checkpoint.")
        return self.actnorm.inverse(z) if self.actnorm is not None else z


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed per example."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)

