"""A second set of BatchNorm running statistics for a second kind of input through the same network.

LFD runs whole images and zoomed crops through one backbone. Their statistics differ (a crop is a close-up), so
one set of running means and variances, updated by both, fits neither at eval time. `SecondaryNormStats` holds
a copy of every BatchNorm buffer of a network and runs the network with those buffers swapped in (and back out,
whatever happens): BatchNorm updates its running statistics in place, so in training the batch statistics update
the copy, eval normalises with it, and the weights (affine parameters included) stay shared. The swap is plain
attribute assignment rather than `torch.func.functional_call`, which the TorchScript (ONNX) tracer refuses.
"""

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['SecondaryNormStats']

_STATS = ('running_mean', 'running_var', 'num_batches_tracked')


class SecondaryNormStats(nn.Module):
    """Copies of the BatchNorm running statistics of `network`, started from its current (e.g. ImageNet) values."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.keys: list[str] = []
        for name, module in network.named_modules():
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                for stat in _STATS:
                    key = f'{name}.{stat}'
                    self.keys.append(key)
                    self.register_buffer(key.replace('.', '__'), getattr(module, stat).detach().clone())

    def forward(self, network: nn.Module, *args, **kwargs):
        """`network(*args, **kwargs)` normalised with (and, in training, updating) these statistics."""
        modules = dict(network.named_modules())
        swapped = []
        try:
            for key in self.keys:
                name, stat = key.rsplit('.', 1)
                swapped.append((modules[name], stat, getattr(modules[name], stat)))
                setattr(modules[name], stat, getattr(self, key.replace('.', '__')))
            return network(*args, **kwargs)
        finally:
            for module, stat, own in swapped:
                setattr(module, stat, own)
