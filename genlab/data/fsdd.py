"""The Free Spoken Digit Dataset: 3,000 recordings of the digits 0-9 spoken by 6 speakers, mono
WAV at 8 kHz, named ``{digit}_{speaker}_{index}.wav`` (Jakobovski/free-spoken-digit-dataset).

Files are read from ``<root>/recordings/*.wav`` or, without extracting it, from the archive
``<root>/recordings.tar.gz`` (either the project's copy or the upstream release archive, which
``download: true`` fetches when neither is there). WAV files are read with scipy.io.wavfile.

Every clip is first resampled to ``sample_rate`` (8,000 Hz as recorded, or a divisor of it such
as 4,000: scipy's polyphase resampler, which low-passes before it decimates), then becomes
``length`` samples by the ``align`` rule: ``start`` (the default) keeps the first ``length``
samples and pads a shorter clip with silence at the end, so that every clip starts where its word
starts (the recordings are trimmed of silence); ``center`` keeps the central ``length`` samples
of a longer clip and centres a shorter one in silence (one sample more on the right when the
padding is odd). The waveform is then mu-law companded to ``vocab_size`` levels (256: 8 bits,
as WaveNet). Splits follow upstream: recordings with index 0-4 are the test split
(300: 5 per digit and speaker), the others (2,700) are cut into train and val by
``val_fraction`` and ``seed``.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import struct
import tarfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from genlab.data.base import DataModule, TensorData, check_stated_shape, refuse_dangling_link
from genlab.errors import DataError
from genlab.modalities.audio import AudioModality, mu_law_encode

SAMPLE_RATE = 8000
TEST_INDICES = range(5)  # the upstream convention: recordings 0-4 of each digit and speaker
LABELS = ("digit", "speaker")
ALIGNS = ("start", "center")
ARCHIVE = "recordings.tar.gz"
UPSTREAM_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
DOWNLOAD_TIMEOUT_S = 30.0
NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)\.wav")


def center_fit(wave: np.ndarray, length: int) -> np.ndarray:
    """The central ``length`` samples of a longer clip; a shorter one centred in silence."""
    n = len(wave)
    if n >= length:
        start = (n - length) // 2
        return wave[start : start + length]
    left = (length - n) // 2
    return np.pad(wave, (left, length - n - left))


def start_fit(wave: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` samples of a longer clip; a shorter one padded with silence at the end."""
    return wave[:length] if len(wave) >= length else np.pad(wave, (0, length - len(wave)))


FITS = {"start": start_fit, "center": center_fit}


def to_float(rate: int, data: np.ndarray, name: str, path: Path) -> np.ndarray:
    """A mono PCM clip as float32 in [-1, 1]; DataError naming the file for anything else."""
    if rate != SAMPLE_RATE:
        raise DataError(f"{path}: {name} is sampled at {rate} Hz, not {SAMPLE_RATE}: resample it or remove it.")
    if data.ndim != 1:
        raise DataError(f"{path}: {name} has {data.shape[1]} channels; FSDD clips are mono: remove it.")
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128) / 128
    if data.dtype.kind == "i":
        return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return np.clip(data.astype(np.float32), -1, 1)


class FSDDDataModule(DataModule):
    """Mu-law clips [1, length] with the digit (or the speaker) as label."""

    mirror_symmetric = False  # a clip played backwards is not speech (dataset.hflip is refused)

    def __init__(
        self,
        *,
        name: str = "fsdd",
        root: Optional[str] = None,
        length: int = 4096,
        sample_rate: int = SAMPLE_RATE,
        align: str = "start",
        label: str = "digit",
        num_classes: int = 10,
        download: bool = True,
        data_shape: Optional[Sequence[int]] = None,
        vocab_size: int = 256,
        **kwargs: Any,
    ) -> None:
        """length: samples per clip, at ``sample_rate`` Hz (8,000 or a divisor of it); align: ``start``
        or ``center``, the crop/pad rule (the module's docstring). label: ``digit``
        (10 classes) or ``speaker`` (6, sorted by name). download: fetch the upstream archive when
        ``root`` holds neither recordings/ nor recordings.tar.gz. data_shape: what the config states
        for the models (checked: [1, length]). vocab_size: mu-law levels. The rest is DataModule's."""
        super().__init__(name=name, root=root, num_classes=num_classes, **kwargs)
        self.length = length
        self.sample_rate = sample_rate
        self.align = align
        self.label = label
        self.download = download
        self.stated_shape = data_shape
        self.vocab_size = vocab_size
        self.native_classes: Optional[int] = 10 if label == "digit" else None
        self._files: Optional[list[str]] = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (1, self.length)

    @property
    def modality(self) -> AudioModality:
        return AudioModality(self.data_shape, self.vocab_size, self.sample_rate)

    # ------------------------------------------------------------------ checks

    def _check_config(self) -> None:
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 16:
            raise DataError(f"dataset.length={self.length!r} must be an integer >= 16 (samples per clip at dataset.sample_rate).")
        rate = self.sample_rate
        if not isinstance(rate, int) or isinstance(rate, bool) or not 0 < rate <= SAMPLE_RATE or SAMPLE_RATE % rate:
            raise DataError(f"dataset.sample_rate={rate!r}: FSDD is recorded at {SAMPLE_RATE} Hz; use {SAMPLE_RATE} "
                            f"or a rate that divides it (e.g. 4000).")
        if self.align not in ALIGNS:
            raise DataError(f"dataset.align={self.align!r}: use one of {list(ALIGNS)} (where a clip is cut or padded).")
        if self.label not in LABELS:
            raise DataError(f"dataset.label={self.label!r}: use one of {list(LABELS)}.")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or not 2 <= self.vocab_size <= 65536:
            raise DataError(f"dataset.vocab_size={self.vocab_size!r}: use the mu-law levels, 2..65536 (256 = 8 bits).")
        check_stated_shape(self.stated_shape, self.data_shape, "[1, dataset.length]")
        super()._check_config()

    def _inspect(self) -> tuple[int, Optional[int]]:
        if self.root is None:
            raise DataError("dataset.root is not set: set dataset.root=<folder> holding recordings/ or recordings.tar.gz.")
        refuse_dangling_link(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"dataset.root={self.root} is not a directory: point it at a folder.")
        if self._source() is None:
            self._fetch()
        names = sorted(name for name, _ in self._members(read=False))
        if not names:
            raise DataError(f"{self._source()} holds no .wav files: put the FSDD recordings there.")
        for name in names:
            if not NAME.fullmatch(name):
                raise DataError(
                    f"{self._source()}: {name} is not named {{digit}}_{{speaker}}_{{index}}.wav as FSDD files are: "
                    "rename or remove it."
                )
        speakers = sorted({NAME.fullmatch(n).group(2) for n in names})
        if self.label == "speaker":
            self.native_classes = len(speakers)
        self._files, self._speakers = names, speakers
        test = sum(int(NAME.fullmatch(n).group(3)) in TEST_INDICES for n in names)
        return len(names) - test, test

    # ------------------------------------------------------------------ files

    def _source(self) -> Optional[Path]:
        """recordings/ (a folder of WAVs) or recordings.tar.gz under root, whichever is there."""
        assert self.root is not None
        for path in (self.root / "recordings", self.root / ARCHIVE):
            if path.exists():
                return path
        return None

    def _members(self, read: bool) -> Iterator[tuple[str, Optional[bytes]]]:
        """(file name, its bytes if ``read``) of every WAV of the source."""
        source = self._source()
        assert source is not None
        if source.is_dir():
            for path in sorted(source.glob("*.wav")):
                yield path.name, path.read_bytes() if read else None
            return
        try:
            with tarfile.open(source) as archive:
                for member in archive:
                    parent = Path(member.name).parent.name
                    if member.isfile() and member.name.endswith(".wav") and parent == "recordings":
                        file = archive.extractfile(member) if read else None
                        yield Path(member.name).name, file.read() if file is not None else None
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"{source} is not a readable tar.gz archive ({type(e).__name__}: {e}): delete it and put a good "
                f"copy there (or set dataset.download=true to fetch {UPSTREAM_URL})."
            ) from None

    def _fetch(self) -> None:
        assert self.root is not None
        target = self.root / ARCHIVE
        if not self.download:
            raise DataError(
                f"FSDD not found: dataset.root={self.root} holds neither recordings/ (the WAV files) nor "
                f"{ARCHIVE}. Put one of them there (a copy: ../shared/data/fsdd/{ARCHIVE}), or set "
                "dataset.download=true."
            )
        from torchvision.datasets.utils import download_url

        created = not self.root.exists()
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            download_url(UPSTREAM_URL, str(self.root), filename=ARCHIVE)
        except Exception as e:  # noqa: BLE001 - URLError, timeouts, HTTP errors: all mean "no archive"
            with contextlib.suppress(OSError):
                target.unlink()
            if created:
                with contextlib.suppress(OSError):
                    self.root.rmdir()
            reason = (str(e).strip().splitlines() or [""])[-1]
            raise DataError(
                f"FSDD could not be downloaded from {UPSTREAM_URL} to {target} (no network?): "
                f"{type(e).__name__}: {reason}. Fix: put {ARCHIVE} or the recordings/ folder in "
                f"dataset.root={self.root}, then set dataset.download=false."
            ) from e
        finally:
            socket.setdefaulttimeout(timeout)

    # ------------------------------------------------------------------ loading

    def _read(self, name: str, data: bytes) -> np.ndarray:
        where = self._source()
        try:
            with warnings.catch_warnings():  # a file cut short is broken, not a shorter clip
                warnings.filterwarnings("error", "Reached EOF prematurely", wavfile.WavFileWarning)
                rate, wave = wavfile.read(io.BytesIO(data))
            if len(wave) == 0:
                raise ValueError("it holds no samples")
        except (ValueError, EOFError, OSError, struct.error, wavfile.WavFileWarning) as e:  # scipy's parser
            raise DataError(
                f"{where}: {name} is not a readable WAV file ({type(e).__name__}: {e}): delete it or put a good "
                "copy back, then run again."
            ) from None
        return to_float(rate, wave, name, where)

    def _load(self) -> dict[str, Dataset]:
        assert self._files is not None
        clips, labels, test = [], [], []
        label_of: Callable[[re.Match], int] = (
            (lambda m: int(m.group(1))) if self.label == "digit" else (lambda m: self._speakers.index(m.group(2)))
        )
        for name, data in sorted(self._members(read=True)):
            match = NAME.fullmatch(name)
            assert match is not None and data is not None
            wave = self._read(name, data)
            if self.sample_rate != SAMPLE_RATE:
                wave = resample_poly(wave, 1, SAMPLE_RATE // self.sample_rate).astype(np.float32)
            clips.append(FITS[self.align](wave, self.length))
            labels.append(label_of(match))
            test.append(int(match.group(3)) in TEST_INDICES)
        x = mu_law_encode(torch.from_numpy(np.stack(clips)), self.vocab_size).unsqueeze(1)
        data = TensorData(x, self._labels(torch.tensor(labels)))
        is_test = torch.tensor(test)
        pool = data.subset(torch.nonzero(~is_test).flatten())
        idx = self._split_indices(len(pool), with_test=False)
        return {"train": pool.subset(idx["train"]), "val": pool.subset(idx["val"]),
                "test": data.subset(torch.nonzero(is_test).flatten())}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "length": self.length, "sample_rate": self.sample_rate,
                "align": self.align, "label": self.label, "vocab_size": self.vocab_size}
