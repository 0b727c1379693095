"""FID noise floor on digits: real images against real images, old reference vs new.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fid_floor.py
"""
import os
import random

import torch

from genlab.data import DigitsDataModule
from genlab.metrics.fid import build_feature_extractor, frechet_distance, statistics

cache = os.path.expanduser("~/.cache/genlab")
dm = DigitsDataModule()
dm.setup("fit")
ext = build_feature_extractor("classifier", dm, cache, None, torch.device("cpu"), False)


def feats(split, idx=None):
    data = dm.split_dataset(split)
    idx = range(len(data)) if idx is None else idx
    return ext.features(torch.stack([data[i][0] for i in idx]))


val, test, train = feats("val"), feats("test"), feats("train")
print("sizes: val", len(val), "test", len(test), "train", len(train))
print("old (reference = the 180 val images):")
print("  test 180 vs val 180: %.3f" % frechet_distance(statistics(test), statistics(val)))
rng = random.Random(0)
olds = [frechet_distance(statistics(train[rng.sample(range(len(train)), 180)]), statistics(val)) for _ in range(10)]
print("  10 random train subsets of 180 vs val 180: mean %.3f sd %.3f" % (
    sum(olds) / 10, torch.tensor(olds).std().item()))
print("new (reference = the %d train images):" % len(train))
print("  val 180 vs train: %.3f   test 180 vs train: %.3f" % (
    frechet_distance(statistics(val), statistics(train)), frechet_distance(statistics(test), statistics(train))))
both = torch.cat([val, test])
print("  val+test 360 vs train: %.3f" % frechet_distance(statistics(both), statistics(train)))
