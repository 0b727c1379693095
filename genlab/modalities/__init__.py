"""What belongs to one kind of data (DESIGN.md, contract 1): how samples are written and shown,
and which classifier measures them. A datamodule provides its ``modality``; shared code (the
sample callback, genlab-sample, the FID callback) calls its methods and never asks which it is.

The interface (``Modality``):

- ``save(samples, stem, nrow)``: write samples [N, *data_shape] next to ``stem`` (images:
  ``stem.png``, a grid), returning the files written;
- ``log(samples, loggers, step, tag, files)``: send them to the W&B / TensorBoard loggers
  (``files``: what ``save`` wrote for them);
- ``extractors``: the FID feature extractors that can measure this data;
- ``data_dims`` and ``default_extractor(data_shape, num_classes)``: how many dimensions one
  example has, and the FID extractor a run on such data gets unless it names one (the config
  asks this when it is resolved: these two must not need torch, and the modules of the
  modalities import torch only where their methods need it);
- ``classifier_arch(num_classes)`` and ``classifier_net(**arch)``: the small classifier genlab
  trains once per dataset for the ``classifier`` FID extractor (its arch is saved with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence

if TYPE_CHECKING:  # the config resolves default_extractor before torch is imported
    from torch import Tensor, nn


class Modality:
    #: the name saved with a trained FID classifier (``MODALITIES`` maps it back to the class)
    name: ClassVar[str] = ""
    #: the FID feature extractors (callbacks.fid.extractor) that can measure this data
    extractors: ClassVar[tuple[str, ...]] = ("classifier",)
    #: the number of dimensions of one example (its data_shape's length)
    data_dims: ClassVar[int] = 0

    @classmethod
    def default_extractor(cls, data_shape: Sequence[int], num_classes: int) -> str:
        """The FID extractor for this data when the config names none: the first that can
        measure it (genlab's own classifier, trained on the labels: no download)."""
        return cls.extractors[0]

    def __init__(self, data_shape: Sequence[int], vocab_size: int = 256) -> None:
        self.data_shape = tuple(int(s) for s in data_shape)
        self.vocab_size = int(vocab_size)

    def save(self, samples: Tensor, stem: Path, nrow: Optional[int] = None) -> list[Path]:
        """Write ``samples`` [N, *data_shape] as files named after ``stem``; returns their paths."""
        raise NotImplementedError

    def log(self, samples: Tensor, loggers: Sequence[Any], step: int, tag: str = "samples",
            files: Sequence[Path] = ()) -> None:
        """Send ``samples`` to the experiment loggers that can show them; ``files`` are what
        ``save`` wrote for them (a logger that takes files is given those)."""
        raise NotImplementedError

    def classifier_arch(self, num_classes: int) -> dict[str, int]:
        """The constructor arguments of this data's FID classifier (part of its cache key)."""
        raise NotImplementedError

    @staticmethod
    def classifier_net(**arch: int) -> nn.Module:
        """The FID classifier: uint8 data [B, *data_shape] -> (features [B, D], logits [B, K])."""
        raise NotImplementedError


def modalities() -> tuple[type[Modality], ...]:
    """Every modality genlab knows (a fixed table: a stored file never picks other code)."""
    from genlab.modalities.audio import AudioModality
    from genlab.modalities.image import ImageModality

    return (ImageModality, AudioModality)


def modality_class(name: str) -> type[Modality]:
    """The modality saved under ``name``."""
    table: dict[str, type[Modality]] = {cls.name: cls for cls in modalities()}
    if name not in table:
        raise ValueError(f"unknown modality {name!r}; genlab knows {sorted(table)}")
    return table[name]


def modality_of_shape(data_shape: Sequence[Any]) -> type[Modality]:
    """The modality whose examples have ``len(data_shape)`` dimensions (each states its own)."""
    fits = [cls for cls in modalities() if cls.data_dims == len(data_shape)]
    if len(fits) != 1:
        raise ValueError(f"data_shape={list(data_shape)} is the shape of {len(fits)} modalities "
                         f"({', '.join(f'{cls.name}: {cls.data_dims} dimensions' for cls in modalities())})")
    return fits[0]
