"""A second set of BatchNorm running statistics for a second kind of input through the same network.

LFD runs whole images and zoomed crops through one backbone. Their statistics differ (a crop is a close-up), so
one set of running means and variances, updated by both, fits neither at eval time. `SecondaryNormStats` holds
a copy of every BatchNorm buffer of a network and runs the network with those buffers swapped in (and back out,
whatever happens): BatchNorm updates its running statistics in place, so in training the batch statistics update
the copy, eval normalises with it, and the weights (affine parameters included) stay shared. The swap is plain
attribute assignment rather than `torch.func.functional_call`, which the TorchScript (ONNX) tracer refuses.
"""

import contextlib

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['SecondaryNormStats', 'frozen_norm_stats', 'freeze_stats_in_recompute']

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


@contextlib.contextmanager
def frozen_norm_stats(network: nn.Module):
    """Run `network` in train mode without changing its BatchNorm running statistics.

    Each BatchNorm still normalises with the batch's statistics (as in train mode) but with momentum 0 and no batch
    counter, so its running statistics stay exactly as they were (and stay readable, e.g. by IAGN's per-cell
    class maps): a grad-free pass that only picks a box or a teacher's logits leaves them to the passes that train.
    """
    # Momentum 0 keeps the running statistics (a float attribute, which torch.compile traces); the batch counter,
    # which BatchNorm bumps in place and no gradient reads, is written back in place.
    norms = [m for m in network.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    stashed = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for module in norms:
        module.momentum = 0.0
    try:
        yield network
    finally:
        for module, momentum, count in stashed:
            module.momentum = momentum
            module.num_batches_tracked.copy_(count)


def freeze_stats_in_recompute(network: nn.Module) -> list:
    """Hooks that keep gradient checkpointing's recomputation from updating BatchNorm running statistics.

    Checkpointing reruns a segment's forward during backward; in train mode that run would update the statistics a
    second time, and with the statistics of whatever set is in place then (LFD's crop statistics are swapped out
    by then, so the image statistics would take the crops'). Inside backward (autograd's current graph task is
    set) each BatchNorm runs with momentum 0 and no batch counter: the same batch statistics, hence the same output
    and the same saved tensors (which checkpointing compares), and running statistics left as they were. They are
    restored when the backward ends, not after the layer's forward: checkpointing stops a recomputation as soon as
    it has the tensors it saved, which can be inside a BatchNorm, whose forward hook then never runs (the layer kept
    momentum 0 for good). Returns the hook handles (`handle.remove()` undoes them).
    """
    return [
        module.register_forward_pre_hook(_pre_recompute)
        for module in network.modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
    ]


def _in_backward() -> bool:
    # No public API says "this forward is a checkpoint recomputation"; the autograd engine's graph task id does.
    return torch._C._current_graph_task_id() != -1


def _pre_recompute(module: _BatchNorm, args) -> None:
    # Frozen once per backward: a second recomputation of the layer (LFD's crop pass) must not stash the frozen state.
    if module.training and _in_backward() and '_recompute_stash' not in module.__dict__:
        module._recompute_stash = _freeze(module)[1]
        torch.autograd.Variable._execution_engine.queue_callback(lambda: _unfreeze_recomputed(module))


def _unfreeze_recomputed(module: _BatchNorm) -> None:
    _unfreeze(module, module.__dict__.pop('_recompute_stash'))


def _freeze(module: _BatchNorm) -> tuple[_BatchNorm, tuple]:
    """Momentum 0 and no batch counter: a train-mode forward leaves the running statistics as they are."""
    stash = (module.momentum, module.num_batches_tracked)
    module.momentum, module.num_batches_tracked = 0.0, None
    return module, stash


def _unfreeze(module: _BatchNorm, stash: tuple) -> None:
    module.momentum, module.num_batches_tracked = stash
