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


def test_the_callbacks_update_with_lists_made_once_per_epoch_is_averaged_models_own():
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(6, 5, dtype=torch.float64))

    torch.manual_seed(0)
    module = Module()
    callback = EMA(decay=0.99)
    callback.setup(None, module, "fit")
    reference = AveragedModel(module, use_buffers=True, **callback._kwargs)
    for step in range(30):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
            module.net[1].running_mean.mul_(0.5).add_(1.0)
            module.net[1].num_batches_tracked += 3
        if step == 10:  # storage replaced behind the parameter (as Module.to does): the lists still see it
            module.net[0].weight.data = module.net[0].weight.data.clone() + 1
        if step == 20:
            callback.on_train_epoch_start(None, module)
        callback._update_average(module)
        reference.update_parameters(module)
    assert int(callback._average_model.n_averaged) == int(reference.n_averaged) == 30
    for (name, a), b in zip(callback._average_model.module.state_dict().items(), reference.module.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert not torch.equal(callback._average_model.module.net[0].weight, module.net[0].weight)
