"""What belongs to one kind of data (DESIGN.md, contract 1): how samples are written and shown,
and which classifier measures them. A datamodule provides its ``modality``; shared code (the
sample callback, genlab-sample, the FID callback) calls its methods and never asks which it is.

The interface (``Modality``):

- ``save(samples, stem, nrow)``: write samples [N, *data_shape] next to ``stem`` (images:
  ``stem.png``, a grid), returning the files written;
- ``log(samples, loggers, step, tag)``: send them to the W&B / TensorBoard loggers;
- ``extractors``: the FID feature extractors that can measure this data;
- ``classifier_arch(num_classes)`` and ``classifier_net(**arch)``: the small classifier genlab
  trains once per dataset for the ``classifier`` FID extractor (its arch is saved with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

from torch import Tensor, nn


class Modality:
    #: the name saved with a trained FID classifier (``MODALITIES`` maps it back to the class)
    name: ClassVar[str] = ""
    #: the FID feature extractors (callbacks.fid.extractor) that can measure this data
    extractors: ClassVar[tuple[str, ...]] = ("classifier",)

    def __init__(self, data_shape: Sequence[int], vocab_size: int = 256) -> None:
        self.data_shape = tuple(int(s) for s in data_shape)
        self.vocab_size = int(vocab_size)

    def save(self, samples: Tensor, stem: Path, nrow: Optional[int] = None) -> list[Path]:
        """Write ``samples`` [N, *data_shape] as files named after ``stem``; returns their paths."""
        raise NotImplementedError

    def log(self, samples: Tensor, loggers: Sequence[Any], step: int, tag: str = "samples") -> None:
        """Send ``samples`` to the experiment loggers that can show them."""
        raise NotImplementedError

    def classifier_arch(self, num_classes: int) -> dict[str, int]:
        """The constructor arguments of this data's FID classifier (part of its cache key)."""
        raise NotImplementedError

    @staticmethod
    def classifier_net(**arch: int) -> nn.Module:
        """The FID classifier: uint8 data [B, *data_shape] -> (features [B, D], logits [B, K])."""
        raise NotImplementedError


def modality_class(name: str) -> type[Modality]:
    """The modality saved under ``name`` (a fixed table: a stored file never picks other code)."""
    from genlab.modalities.image import ImageModality

    table: dict[str, type[Modality]] = {cls.name: cls for cls in (ImageModality,)}
    if name not in table:
        raise ValueError(f"unknown modality {name!r}; genlab knows {sorted(table)}")
    return table[name]
