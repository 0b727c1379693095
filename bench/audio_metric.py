"""Benchmark: the spoken-digit metric of the models bench/audio_budget.py trained (its .pt files).

WaveNet: ``--n`` digit-conditional samples (digits 0-9 in turn, temperature 1, cached sampler),
FID in the FSDD classifier's features against the test split and the share the classifier
assigns to the asked digit (chance 10%). WaveGlow: ``--n`` test clips spread over the split (every digit) vocoded from their
mel-spectrograms at temperature 0.6, the same FID and the share assigned to the clip's digit.
The classifier is genlab's (trained once on the FSDD train split, cached in --cache).

    python -m bench.audio_metric --wavenet /tmp/aud/wavenet_budget.pt --waveglow /tmp/aud/waveglow_budget.pt
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genlab.callbacks.fid import FIDCallback
from genlab.data import FSDDDataModule
from genlab.models.waveglow import WaveGlow
from genlab.models.wavenet import WaveNet
from genlab.samplers.autoregressive import AutoregressiveSampler
from genlab.samplers.vocoder import VocoderSampler
from genlab.utils import seeded

T = 4096


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wavenet", required=True)
    parser.add_argument("--waveglow", required=True)
    parser.add_argument("--root", default="../shared/data/fsdd")
    parser.add_argument("--cache", default="/tmp/aud/cache")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = FSDDDataModule(root=args.root, length=T, download=False)
    data.setup()
    fid = FIDCallback(extractor="classifier", num_samples=args.n, chunk_size=args.n, cache_dir=args.cache)
    results = {}

    wavenet = WaveNet([1, T], conditional=True, num_classes=10, channels=16, skip_channels=32,
                      layers_per_stack=8, stacks=2)
    wavenet.load_state_dict(torch.load(args.wavenet, weights_only=True))
    begin = time.perf_counter()
    with seeded(0):
        results["wavenet"] = fid.compute(wavenet.eval(), AutoregressiveSampler(), data, "test")
    results["wavenet"]["seconds"] = round(time.perf_counter() - begin)

    waveglow = WaveGlow([1, T], groups=8, steps=4, hidden=32, layers=4, references=args.n)
    state = torch.load(args.waveglow, weights_only=True)
    waveglow.load_state_dict({k: v for k, v in state.items() if not k.startswith("reference")}, strict=False)
    test = data.split_dataset("test")
    clips, labels = zip(*(test[i] for i in range(0, len(test), len(test) // args.n)[: args.n]))  # every digit
    waveglow.references.copy_(torch.stack(clips))
    waveglow.reference_labels.copy_(torch.as_tensor(labels))
    waveglow.references_filled.fill_(True)
    sampler = VocoderSampler(temperature=0.6)
    with seeded(0):
        results["waveglow"] = fid.compute(waveglow.eval(), sampler, data, "test")
        vocoded = sampler.sample(waveglow, args.n)
    logits = list(fid.extractor.extract(vocoded).values())[1]
    results["waveglow"]["test/class_acc_classifier (digit of the vocoded clip)"] = float(
        (logits.argmax(1) == waveglow.reference_labels).double().mean())
    real = list(fid.extractor.extract(waveglow.references).values())[1]
    results["classifier_accuracy_on_the_real_clips"] = float((real.argmax(1) == waveglow.reference_labels).double().mean())
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
