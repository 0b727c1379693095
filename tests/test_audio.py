"""Audio (issue 12): the FSDD loader on the real shared files, a broken WAV named, mu-law, the audio
modality's WAV / PNG / W&B / TensorBoard outputs and the spoken-digit classifier metric.

No audio family lives here (WaveNet and WaveGlow are another branch): a tiny causal convolution
over [C, T] stands in, through the autoregressive family's generic contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy.io import wavfile
from torch import nn

from bench.fsdd_classifier import Clips
from genlab.callbacks.fid import FIDCallback
from genlab.callbacks.samples import SampleGrid
from genlab.config import instantiate
from genlab.data import FSDDDataModule
from genlab.data.fsdd import center_fit, start_fit
from genlab.errors import ConfigError, DataError
from genlab.modalities.audio import mu_law_decode, mu_law_encode
from genlab.models.autoregressive import AutoregressiveModel
from genlab.samplers.autoregressive import AutoregressiveSampler

from conftest import SHARED_DATA, compose_cfg

FSDD = SHARED_DATA / "fsdd"
LENGTH = 1024


@pytest.fixture(scope="module")
def fsdd():
    if not (FSDD / "recordings.tar.gz").is_file():
        pytest.skip(f"FSDD not present at {FSDD}")
    data = FSDDDataModule(root=str(FSDD), length=LENGTH, batch_size=32, download=False)
    data.setup()
    return data


class TinyCausal(AutoregressiveModel):
    """Logits of x[t] from x[t-2], x[t-1] and the class: the smallest causal model of [C, T]."""

    data_dims = 2

    def __init__(self, data_shape=(1, LENGTH), num_classes: int = 10, vocab_size: int = 256) -> None:
        super().__init__(data_shape, num_classes, conditional=True, vocab_size=vocab_size)
        c = self.data_shape[0]
        self.inp = nn.Embedding(vocab_size, 8)
        self.conv = nn.Conv1d(8 * c, 16, 2)
        self.cls = nn.Embedding(num_classes, 16)
        self.out = nn.Conv1d(16, c * vocab_size, 1)

    def logits(self, x, y=None):
        h = self.inp(x.long()).permute(0, 1, 3, 2).flatten(1, 2)  # [B, 8C, T]
        h = self.conv(F.pad(h, (2, -1))) + self.cls(self.class_labels(y))[:, :, None]  # t sees t-2, t-1
        return self.out(torch.relu(h))

    def window(self, position):
        return [(max(0, position[0] - 2), position[0] + 1)]


# ----- the loader ---------------------------------------------------------------------------

def test_fsdd_splits_labels_and_shape_follow_upstream(fsdd):
    sizes = {s: len(fsdd.split_dataset(s)) for s in ("train", "val", "test")}
    # index 0-4 of each digit and speaker is test (10 x 6 x 5); 10% of the other 2,700 is val
    assert sizes == {"train": 2430, "val": 270, "test": 300}
    test = fsdd.split_dataset("test")
    assert test.images.shape == (300, 1, LENGTH) and test.images.dtype == torch.uint8
    assert torch.equal(test.labels.bincount(), torch.full((10,), 30))
    assert fsdd.data_shape == (1, LENGTH) and fsdd.vocab_size == 256 and fsdd.modality.name == "audio"
    # the same files with the speaker as label: 6 speakers, 50 test clips each
    by_speaker = FSDDDataModule(root=str(FSDD), length=64, label="speaker", num_classes=6, download=False)
    assert torch.equal(by_speaker.split_dataset("test").labels.bincount(), torch.full((6,), 50))
    with pytest.raises(DataError, match="dataset.num_classes=10 but fsdd has 6 classes"):
        FSDDDataModule(root=str(FSDD), label="speaker", num_classes=10).check()


def test_mu_law_round_trip_error_is_within_half_a_step(fsdd):
    x = fsdd.split_dataset("val").images[:50]
    assert torch.equal(mu_law_encode(mu_law_decode(x)), x)  # every level decodes to a point of its own cell
    s = torch.linspace(-1, 1, 20001)
    err = (mu_law_decode(mu_law_encode(s)) - s).abs()
    mu = 255
    # half a level is 1/mu in the companded domain; the expansion is convex, so its slope at the
    # far end of that half level bounds the error
    f = torch.log1p(mu * s.abs()) / math.log1p(mu)
    half_step = ((1 + mu) ** (f + 1 / mu) - (1 + mu) ** f) / mu
    assert (err <= half_step + 1e-6).all() and err.max() < 0.022 and err[s.abs() < 0.01].max() < 3e-4  # ~70x finer near silence
    assert int(mu_law_encode(torch.zeros(1))) == 128  # silence (the padding) is the middle value


def test_center_fit_crops_and_pads_about_the_centre():
    assert center_fit(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]
    assert center_fit(np.arange(1.0, 4.0), 6).tolist() == [0, 1, 2, 3, 0, 0]


def test_start_fit_keeps_the_start_and_pads_the_end():
    assert start_fit(np.arange(10.0), 4).tolist() == [0, 1, 2, 3]
    assert start_fit(np.arange(1.0, 4.0), 6).tolist() == [1, 2, 3, 0, 0, 0]


def test_every_clip_starts_with_its_word_by_default(fsdd):
    """The recordings are trimmed of silence: with the default ``align: start`` no clip opens with
    silence, so a causal model knows where a word begins (the centre rule opened most clips with
    up to half a clip of padding, a point a WaveNet of a shorter receptive field cannot locate)."""
    def silent_openings(data):
        x = data.split_dataset("train").images[:, 0, :64].long() - 128
        return float((x.abs() <= 1).all(1).double().mean())  # mu-law 127-129: silence

    assert fsdd.align == "start" and silent_openings(fsdd) == 0.0
    centred = FSDDDataModule(root=str(FSDD), length=LENGTH * 4, align="center", download=False)
    centred.setup()
    assert silent_openings(centred) > 0.5


def test_a_lower_sample_rate_resamples_without_aliasing(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    t = np.arange(4000) / 8000
    for i, hz in enumerate((500, 3000, 500, 3000)):  # below and above the Nyquist frequency of 4 kHz
        wavfile.write(folder / f"{i}_ann_{i + 5}.wav", 8000, (np.sin(2 * np.pi * hz * t) * 16000).astype(np.int16))
    data = FSDDDataModule(root=str(tmp_path), length=1024, sample_rate=4000, val_fraction=0.25, download=False)
    data.setup()
    assert data.data_shape == (1, 1024) and data.modality.sample_rate == 4000
    assert data.identity()["sample_rate"] == 4000  # a classifier trained at 8 kHz is not reused
    clips = {int(y): mu_law_decode(x) for split in ("train", "val") for x, y in data.split_dataset(split)}
    low, high = clips[0][0, 100:900], clips[1][0, 100:900]
    assert low.abs().max() > 0.4  # 500 Hz passes, 8 samples a period at 4 kHz
    assert torch.allclose(low[8:], low[:-8], atol=0.02)
    assert high.abs().max() < 0.05  # 3 kHz is above 2 kHz: filtered out, not folded to 1 kHz
    with pytest.raises(DataError, match=r"dataset.sample_rate=3000.*divides it"):
        FSDDDataModule(root=str(tmp_path), sample_rate=3000, download=False).check()
    with pytest.raises(DataError, match=r"dataset.align='end'"):
        FSDDDataModule(root=str(tmp_path), align="end", download=False).check()


def test_a_broken_or_foreign_wav_is_named(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in ("3_ann_7.wav", "4_bob_8.wav", "2_ann_9.wav", "1_bob_2.wav"):
        wavfile.write(folder / name, 8000, (np.sin(np.arange(900) / 5) * 9000).astype(np.int16))
    (folder / "5_ann_9.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt broken")
    data = FSDDDataModule(root=str(tmp_path), length=256, val_fraction=0.25, download=False)
    with pytest.raises(DataError, match=r"5_ann_9.wav is not a readable WAV file"):
        data.setup()
    good = (folder / "3_ann_7.wav").read_bytes()
    (folder / "5_ann_9.wav").write_bytes(good[: len(good) // 2])  # cut short: the header promises more
    with pytest.raises(DataError, match=r"5_ann_9.wav is not a readable WAV file.*Reached EOF prematurely"):
        FSDDDataModule(root=str(tmp_path), length=256, val_fraction=0.25).setup()
    wavfile.write(folder / "5_ann_9.wav", 16000, np.zeros(100, np.int16))
    with pytest.raises(DataError, match=r"5_ann_9.wav is sampled at 16000 Hz, not 8000"):
        FSDDDataModule(root=str(tmp_path), length=256, val_fraction=0.25).setup()
    (folder / "notes.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"notes.wav is not named \{digit\}_\{speaker\}_\{index\}.wav"):
        FSDDDataModule(root=str(tmp_path), length=256).check()
    with pytest.raises(DataError, match=r"holds neither recordings/.*dataset.download=true"):
        FSDDDataModule(root=str(tmp_path / "empty"), download=False).check()


def test_an_image_family_refuses_audio_data_naming_the_key(tmp_path):
    cfg = compose_cfg(overrides=["dataset=fsdd", "model=pixelcnn", f"paths.data_dir={tmp_path}"])
    assert list(cfg.model.data_shape) == [1, 4096]
    with pytest.raises(ConfigError, match=r"dataset.data_shape=\[1, 4096\] has 2 axes.*PixelCNN.*3 axes"):
        instantiate(cfg.model, "model")


def test_fid_refuses_data_of_more_than_8_bits_before_training(tmp_path):
    """The extractors take uint8: 10-bit mu-law audio is refused by the check before training,
    not by the first FID after an epoch."""
    fsdd = FSDDDataModule(root=str(tmp_path), download=False, vocab_size=1024)
    with pytest.raises(ConfigError, match=r"callbacks\.fid: .*uint8.*dataset\.vocab_size=1024.*callbacks\.fid=null"):
        FIDCallback(extractor="classifier").check(fsdd)


def test_the_autoregressive_sampler_walks_time_with_the_window_or_without():
    model = TinyCausal((2, 40), vocab_size=300).eval()  # two channels, more than 8 bits
    labels = torch.tensor([1, 7, 3])
    with torch.no_grad():
        torch.manual_seed(0)
        cached = AutoregressiveSampler().sample(model, 3, labels)
        torch.manual_seed(0)
        full = AutoregressiveSampler(cache=False).sample(model, 3, labels)
    assert cached.shape == (3, 2, 40) and cached.dtype == torch.int32 and int(cached.max()) > 255
    assert torch.equal(cached, full)
    # exact likelihood over [C, T]: the sum of per-value conditionals, in bits
    nll = model.nll_bits(cached, labels)  # an untrained model is close to uniform: log2(300) per value
    assert nll.shape == (3,) and abs(float(nll.mean()) / (80 * math.log2(300)) - 1) < 0.05


# ----- outputs and the metric, through a Trainer ------------------------------------------

def test_spoken_digit_fid_and_class_accuracy_tell_real_clips_from_noise(fsdd, cache_dir):
    # stand-in samplers: real held-out clips of the asked digits (a perfect model), or noise
    model = TinyCausal()
    callback = FIDCallback(extractor="classifier", num_samples=100, chunk_size=50, cache_dir=str(cache_dir))
    assert callback.metric_names(model) == ["val/fid_classifier", "val/precision_classifier", "val/recall_classifier",
                                            "val/class_acc_classifier"]
    real = callback.compute(model, Clips(fsdd.split_dataset("test"), noise=False), fsdd, "val")
    noise = callback.compute(model, Clips(fsdd.split_dataset("test"), noise=True), fsdd, "val")
    assert real["val/class_acc_classifier"] > 0.8 > 0.3 > noise["val/class_acc_classifier"]
    assert real["val/fid_classifier"] * 5 < noise["val/fid_classifier"]
    assert real["val/recall_classifier"] > noise["val/recall_classifier"]  # the clips cover some of the data, noise none
    with pytest.raises(ConfigError, match="extractor=inception cannot measure the audio data.*extractor=classifier"):
        FIDCallback(extractor="inception").check(fsdd)


def test_class_accuracy_of_a_vocoder_is_against_the_label_of_each_clip_it_resynthesises(fsdd, cache_dir):
    """A vocoder is not conditional on a class, but each clip it draws re-synthesises a labelled
    held-out clip: class_acc compares the classifier with that clip's digit, chunk after chunk."""
    from genlab.models.waveglow import WaveGlow
    from genlab.samplers.vocoder import VocoderSampler

    test = fsdd.split_dataset("test")
    pick = torch.arange(100) * 3  # 100 test clips, every digit
    model = WaveGlow([1, LENGTH], num_classes=10, n_mels=8, n_fft=64, hop_length=16, groups=4, steps=1, hidden=4, layers=1,
                     references=100).eval()
    model.references.copy_(test.images[pick])
    model.reference_labels.copy_(test.labels[pick])
    model.references_filled.fill_(True)
    model.vocode = lambda clips, temperature: clips  # a perfect vocoder: the clip itself
    model.sampler = VocoderSampler()
    callback = FIDCallback(extractor="classifier", num_samples=100, chunk_size=50, cache_dir=str(cache_dir), prc=False)
    assert callback.metric_names(model) == ["val/fid_classifier", "val/class_acc_classifier"]
    assert callback.compute(model, model.sampler, fsdd, "val")["val/class_acc_classifier"] > 0.8
    model.reference_labels.copy_((test.labels[pick] + 1) % 10)  # the same clips said to be other digits
    assert callback.compute(model, model.sampler, fsdd, "val")["val/class_acc_classifier"] < 0.2


@pytest.mark.slow
def test_training_writes_wavs_and_a_png_and_sends_audio_to_wandb_and_tensorboard(fsdd, tmp_path, cache_dir):
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from wandb_records import history, read_records

    model = TinyCausal()
    model.sampler = AutoregressiveSampler()
    loggers = [WandbLogger(save_dir=str(tmp_path), offline=True, project="t"),
               TensorBoardLogger(str(tmp_path / "tb"), name="", version="")]
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=loggers, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SampleGrid(str(tmp_path / "samples"), n=3),
                   FIDCallback(extractor="classifier", num_samples=20, chunk_size=20, cache_dir=str(cache_dir))],
    )
    trainer.fit(model, datamodule=fsdd)
    assert 0 <= trainer.callback_metrics["val/class_acc_classifier"] <= 1
    loggers[0].experiment.finish()

    stem = tmp_path / "samples" / "epoch000-step000002"
    assert stem.with_suffix(".png").stat().st_size > 5000
    rate, pcm = wavfile.read(tmp_path / "samples" / "epoch000-step000002-002.wav")
    assert rate == 8000 and pcm.dtype == np.int16 and pcm.shape == (LENGTH,)
    assert not (tmp_path / "samples" / "epoch000-step000002-003.wav").exists()
    # the 16-bit file holds the decoded mu-law clip the model drew (to 16-bit rounding)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = model.sampler.sample(model.eval(), 3)
    assert np.abs(pcm / 32767 - mu_law_decode(drawn[2, 0]).numpy()).max() < 1e-4

    run = next((tmp_path / "wandb").glob("offline-run-*"))
    rows = history(read_records(next(run.glob("run-*.wandb"))))
    audio = [row for row in rows if row.get("samples/_type") == "audio"]
    assert len(audio) == 1 and audio[0]["samples/count"] == 3
    assert len(list((run / "files" / "media" / "audio").glob("samples_*.wav"))) == 3
    assert any("val/fid_classifier" in row for row in rows)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"audio": 0})
    events.Reload()
    assert {"samples/0", "samples/2"} <= set(events.Tags()["audio"])
    assert events.Audio("samples/0")[0].sample_rate == 8000


def test_download_fetches_the_upstream_archive_layout_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    import http.server
    import tarfile
    import threading

    from genlab.data import fsdd as fsdd_module

    # the upstream release archive's layout, served over real HTTP by a local server
    served = tmp_path / "served"
    wavs = served / "free-spoken-digit-dataset-1.0.10" / "recordings"
    wavs.mkdir(parents=True)
    for name in ("3_ann_7.wav", "4_bob_8.wav", "2_ann_9.wav", "1_bob_2.wav", "0_ann_0.wav"):
        wavfile.write(wavs / name, 8000, (np.sin(np.arange(500) / 3) * 8000).astype(np.int16))
    with tarfile.open(served / "v1.0.10.tar.gz", "w:gz") as archive:
        archive.add(wavs.parent, arcname="free-spoken-digit-dataset-1.0.10")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(fsdd_module, "UPSTREAM_URL", f"http://127.0.0.1:{server.server_port}/v1.0.10.tar.gz")
        data = FSDDDataModule(root=str(tmp_path / "new"), length=128, val_fraction=0.25, download=True)
        assert {s: len(data.split_dataset(s)) for s in ("train", "val", "test")} == {"train": 2, "val": 1, "test": 2}
        assert (tmp_path / "new" / "recordings.tar.gz").is_file()
        # nothing listens on the address: the error names the URL and the fix; no folder is left
        monkeypatch.setattr(fsdd_module, "UPSTREAM_URL", f"http://127.0.0.1:{server.server_port}/missing.tar.gz")
        with pytest.raises(DataError, match=r"could not be downloaded from http://127.0.0.1.*missing.tar.gz.*"
                                            r"put recordings.tar.gz or the recordings/ folder"):
            FSDDDataModule(root=str(tmp_path / "other"), download=True).check()
        assert not (tmp_path / "other").exists()
    finally:
        server.shutdown()
