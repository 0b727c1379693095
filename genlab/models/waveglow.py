"""WaveGlow (Prenger et al., 2019): ``model=waveglow``, a flow vocoder of mu-law audio.

A bijection f maps a clip to Gaussian noise given the clip's mel-spectrogram m(x): audio squeezed
into groups of ``groups`` samples, invertible 1x1 convolutions and affine couplings whose
networks are non-causal WaveNet stacks conditioned on m(x) upsampled to the sample rate
(``genlab.nets.waveglow``). Training maximises log p(u | m(x)) = log N(f(u); 0, I) + log|det df/du|
on the dequantized clip u = (x + w) / V, w ~ U[0, 1)^T, V = ``vocab_size`` (the image flows'
convention, ``genlab.models.flow``), so that

    -log2 P(x | m(x)) <= E_w[-log2 p(u | m(x))] + T log2 V,

an upper bound (``likelihood = "bound"``). It is a likelihood *given the mel-spectrogram of the
same clip*, what a vocoder models; it is not -log2 P(x), so it cannot be compared with WaveNet's
bits per sample (the mel carries much of the information about x).

Sampling is vocoding (family ``vocoder``, ``genlab.samplers.vocoder``): noise at a temperature is
mapped through f^-1 given the mel of a held-out clip. The model keeps ``references`` such clips
from the validation split (taken at the start of training and saved in its checkpoints, so
``genlab-sample`` needs no dataset); ``conditioning_clips(n)`` gives them, ``vocode(clips, T)`` draws.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import require_positive
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.modalities.audio import mu_law_decode
from genlab.nets.flows import ActNorm
from genlab.nets.waveglow import LogMel, WaveGlowFlow, squeeze_audio, standard_normal_log_prob, unsqueeze_audio

LOG2 = math.log(2.0)
log = logging.getLogger(__name__)


class WaveGlow(GenerativeModel):
    family = "vocoder"
    likelihood = "bound"
    likelihood_given = "mel"  # -log2 P(x | mel of x): logged as bpd_given_mel, never as a clip's bpd
    step_metrics = ("loss",)
    #: EMA averages the flow only: the stored reference clips (uint8) must not be averaged
    averaged_module = "flow"
    data_dims = 2
    fixed_vocab_size = None

    def __init__(
        self,
        data_shape: Sequence[int],
        vocab_size: int = 256,
        num_classes: int = 0,
        sample_rate: int = 8000,
        n_mels: int = 40,
        n_fft: int = 256,
        hop_length: int = 64,
        groups: int = 8,
        steps: int = 6,
        hidden: int = 32,
        layers: int = 4,
        kernel_size: int = 3,
        scale_bound: float = 2.0,
        actnorm: bool = True,
        invconv: bool = True,
        references: int = 256,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__(data_shape, num_classes, optimizer, scheduler, vocab_size=vocab_size)
        if self.data_shape[0] != 1:
            raise ConfigError(f"model=waveglow models mono audio of data_shape [1, T]; the dataset gives "
                              f"{list(self.data_shape)}. Pick an audio dataset (dataset=fsdd).")
        require_positive("model", vocab_size=vocab_size, sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft,
                         hop_length=hop_length, steps=steps, hidden=hidden, layers=layers, references=references)
        length = self.data_shape[1]
        if groups < 2 or length % groups:
            raise ConfigError(f"model.groups={groups} must be >= 2 and divide the clip length {length} "
                              f"(dataset's data_shape); e.g. model.groups=8 with a length that is a multiple of 8")
        if length <= n_fft // 2:
            raise ConfigError(f"clips of {length} samples are too short for model.n_fft={n_fft} (the mel-spectrogram "
                              f"needs more than n_fft / 2 samples): lower model.n_fft or lengthen dataset.length")
        if kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size={kernel_size} must be odd (the coupling networks are centred)")
        self.groups = int(groups)
        self.mel = LogMel(sample_rate, n_fft, hop_length, n_mels)
        # the log mel (about -11.5 in silence, up to +6) standardised per mel band by the first
        # training batch, then fixed: raw, it saturated most gates of the coupling networks at the start
        self.mel_norm = ActNorm(n_mels, eps=0.01)  # eps: a band that never varies is not blown up
        self.mel_norm.requires_grad_(False)
        self.flow = WaveGlowFlow(groups, n_mels * groups, steps, hidden, layers, kernel_size, scale_bound,
                                 actnorm, invconv)
        # held-out clips to vocode from, saved with the weights (filled at the start of training)
        self.register_buffer("references", torch.zeros(references, *self.data_shape, dtype=self.value_dtype))
        self.register_buffer("reference_labels", torch.full((references,), -1, dtype=torch.long))
        self.register_buffer("references_filled", torch.tensor(False))

    # ----- conditioning -------------------------------------------------------------------
    def condition(self, x: Tensor) -> Tensor:
        """The log mel-spectrogram of the quantized clips x [B, 1, T], standardised per band (the
        first training batch sets the scale: ``mel_norm``), upsampled to one frame per
        sample and squeezed like the audio: [B, n_mels * groups, T / groups]."""
        mel = self.mel_norm(self.mel(mu_law_decode(x[:, 0], self.vocab_size))[..., None])[0][..., 0]
        # frame k of a centred STFT is about sample k * hop: the first and last frames at the clip's ends
        up = F.interpolate(mel, size=x.shape[-1], mode="linear", align_corners=True)
        return squeeze_audio(up, self.groups)[..., 0].to(self.dtype)

    # ----- likelihood ---------------------------------------------------------------------
    def dequantize(self, x: Tensor) -> Tensor:
        """Quantized x -> u = (x + w) / V, w ~ U[0, 1): a point of x's cell of [0, 1)^T."""
        return (x.to(self.dtype) + torch.rand(x.shape, dtype=self.dtype, device=x.device)) / self.vocab_size

    def base_log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def log_prob(self, u: Tensor, cond: Tensor) -> Tensor:
        """log p(u | mel) in nats of dequantized clips u [B, 1, T], in float32 even under autocast."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            z, logdet = self.flow(squeeze_audio(u, self.groups), cond.to(u.dtype))
            return self.base_log_prob(z) + logdet

    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Upper bound on -log2 P(x | mel(x)), one uniform dequantization per clip."""
        log_pu = self.log_prob(self.dequantize(x), self.condition(x))
        return -(log_pu - self.num_dims * math.log(self.vocab_size)) / LOG2

    def on_fit_start(self) -> None:
        log.info("waveglow: bits per sample is an upper bound on -log2 P(x | mel-spectrogram of x) "
                 "(uniform dequantization), not on -log2 P(x)")
        if not bool(self.references_filled):
            data = self.trainer.datamodule.split_dataset("val")
            n = min(len(data), self.references.shape[0])
            index = torch.arange(len(self.references)) % n
            self.references.copy_(torch.stack([data[int(i)][0] for i in index]))
            self.reference_labels.copy_(torch.as_tensor([int(data[int(i)][1]) for i in index]))
            self.references_filled.fill_(True)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, _ = batch
        loss = self.nll_bits(x).mean() / self.num_dims  # bits per sample, one dequantization
        if stage == "train":
            self.check_finite(loss=loss)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=on_step,
                 sync_dist=not on_step, batch_size=x.shape[0])
        return loss

    # ----- the primitives of genlab.samplers.vocoder --------------------------------------
    def conditioning_clips(self, n: int, start: int = 0) -> tuple[Tensor, Tensor]:
        """Held-out clips ``start`` .. ``start + n - 1`` (the stored references, cycled) whose
        mel-spectrograms to vocode, and their labels (digit or speaker)."""
        if not bool(self.references_filled):
            raise ConfigError("this WaveGlow holds no reference clips to vocode: they are taken from the "
                              "validation split when training starts; sample from a trained checkpoint")
        index = torch.arange(start, start + n, device=self.references.device) % self.references.shape[0]
        return self.references[index], self.reference_labels[index]

    @torch.no_grad()
    def vocode(self, clips: Tensor, temperature: float = 1.0) -> Tensor:
        """New clips for the mel-spectrograms of ``clips``: z ~ N(0, T^2 I) through the inverse flow,
        each value of u in [0, 1) falling in one of V bins."""
        cond = self.condition(clips)
        z = temperature * torch.randn(clips.shape[0], self.groups, clips.shape[-1] // self.groups, 1,
                                      device=clips.device, dtype=cond.dtype)
        with torch.autocast(device_type=clips.device.type, enabled=False):
            u = unsqueeze_audio(self.flow.inverse(z, cond), self.groups)
        return (u * self.vocab_size).floor().clamp(0, self.vocab_size - 1).to(self.value_dtype)
