"""The spoken-digit FID classifier on FSDD: training time and held-out accuracy per clip length,
and the metric on real test clips against noise (see bench/fsdd_classifier.md).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/fsdd_classifier.py --root ../shared/data/fsdd --lengths 1024 4096
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from genlab.callbacks.fid import FIDCallback
from genlab.data import FSDDDataModule
from genlab.metrics.fid import ensure_classifier
from genlab.samplers.base import Sampler


class Clips(Sampler):
    """Real test clips of the asked digits, or uniform noise: what a perfect / a useless model draws."""

    def __init__(self, data, noise: bool) -> None:
        self.data, self.noise = data, noise

    def sample(self, model, n, labels=None):
        if self.noise:
            return torch.randint(0, 256, (n, *self.data.images.shape[1:]), dtype=torch.uint8)
        picks = [int(torch.nonzero(self.data.labels == int(c))[i // 10 % 30]) for i, c in enumerate(labels)]
        return self.data.images[picks]


class Conditional:
    conditional, num_classes, device, training = True, 10, torch.device("cpu"), False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="../shared/data/fsdd")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        for length in args.lengths:
            data = FSDDDataModule(root=args.root, length=length, download=False)
            start = time.perf_counter()
            path = ensure_classifier(data, cache)
            seconds = time.perf_counter() - start
            accuracy = torch.load(path, weights_only=True)["val_accuracy"]
            fid = FIDCallback(extractor="classifier", num_samples=300, chunk_size=100, cache_dir=cache)
            test = data.split_dataset("test")
            real = fid.compute(Conditional(), Clips(test, False), data, "val")
            noise = fid.compute(Conditional(), Clips(test, True), data, "val")
            print(f"length {length}: classifier trained in {seconds:.0f} s (incl. loading), val accuracy "
                  f"{accuracy:.3f}; test clips vs val: FID {real['val/fid_classifier']:.2f}, class_acc "
                  f"{real['val/class_acc_classifier']:.3f}; noise: FID {noise['val/fid_classifier']:.1f}, "
                  f"class_acc {noise['val/class_acc_classifier']:.3f}")


if __name__ == "__main__":
    main()
