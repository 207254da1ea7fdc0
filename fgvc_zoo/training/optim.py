"""The optimiser's parameter groups as the FGVC references build them.

NTS-Net and PMG train ResNet-50 with `torch.optim.SGD(..., momentum=0.9, weight_decay=5e-4)` over every parameter:
biases and BatchNorm included, classical (not Nesterov) momentum, the pretrained layers at 0.1x the lr. A
transformer's position embeddings and tokens are another matter: decaying them towards zero erases what they
encode, so timm lists them in `no_weight_decay()`, and those names (only those) get none here.
"""

from typing import Any

import torch.nn as nn

__all__ = ['param_groups']


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_lr_mult: float,
    weight_decay: float,
    backbone_parameters: Any = (),
) -> list[dict[str, Any]]:
    """Trainable parameters in up to four groups: head / backbone (`backbone_parameters`, at `backbone_lr_mult` x
    `lr`), each split into decayed and not decayed (the model's `no_weight_decay()` names, weight decay 0)."""
    backbone_ids = {id(p) for p in backbone_parameters}
    no_decay = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in backbone_ids, name in no_decay), []).append(parameter)
    return [
        {
            'params': groups[key],
            'lr': lr * (backbone_lr_mult if key[0] else 1.0),
            'weight_decay': 0.0 if key[1] else weight_decay,
        }
        for key in sorted(groups)
    ]
