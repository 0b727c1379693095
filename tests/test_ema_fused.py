"""The EMA's fused multi-tensor update is the per-tensor update it replaced, to the bit."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from genlab.callbacks.ema import EMA


def per_tensor(decay):  # the update genlab used before: one Python call per tensor
    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return d * averaged + (1.0 - d) * current
    return update


def test_fused_ema_equals_the_per_tensor_loop_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(6, 5, dtype=torch.float64))
    callback = EMA(decay=0.99)
    fused = AveragedModel(net, use_buffers=True, **callback._kwargs)
    loop = AveragedModel(net, use_buffers=True, avg_fn=per_tensor(0.99))
    for _ in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.mul_(0.5).add_(1.0)
            net[1].num_batches_tracked += 3  # an integer buffer goes the per-tensor way
        fused.update_parameters(net)
        loop.update_parameters(net)
    for (name, a), b in zip(fused.module.state_dict().items(), loop.module.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert not torch.equal(fused.module[0].weight, net[0].weight)  # it did average
