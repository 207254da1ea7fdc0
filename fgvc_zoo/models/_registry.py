"""The registry of heads: which names are heads, their classes and models, and how a model name splits."""

from collections.abc import Callable, Collection
from typing import NamedTuple

import timm
import torch.nn as nn
from timm.models import register_model, split_model_name_tag

from ._contract import FgvcModel

__all__ = [
    'register_head',
    'list_heads',
    'ModelName',
    'split_model_name',
    'head_name',
    'head_class',
    'model_head_name',
    'head_models',
]

# The registered heads by name (their generic entrypoint's), and the module each is registered from.
_HEADS: dict[str, type[FgvcModel]] = {}
_HEAD_MODULES: dict[str, str] = {}


def register_head(model_cls: type[FgvcModel]) -> Callable[[Callable[..., FgvcModel]], Callable[..., FgvcModel]]:
    """Decorate a head's generic entrypoint (`def lfd(pretrained=False, **kwargs)`): timm's `register_model`, and
    the head's name, class and module recorded for the generic tools (`list_heads`, `head_name`, `head_models`).
    Its `<name>_<backbone>` variants (one per `POPULAR_BACKBONES`) are written-out `register_model` functions."""

    def decorator(fn: Callable[..., FgvcModel]) -> Callable[..., FgvcModel]:
        if '_' in fn.__name__:
            raise ValueError(f"A head's name is its variants' prefix and cannot hold '_': '{fn.__name__}'.")
        _HEADS[fn.__name__] = model_cls
        _HEAD_MODULES[fn.__name__] = fn.__module__.split('.')[-1]
        return register_model(fn)

    return decorator


def list_heads() -> list[str]:
    """The names of the registered heads (`['dpnet', 'iagn', 'lfd']`), sorted."""
    return sorted(_HEADS)


class ModelName(NamedTuple):
    """A model name in its parts: `lfd_convnext_tiny.fb_in22k_ft_in1k` is ('lfd', 'convnext_tiny', 'fb_in22k_ft_in1k').

    head: the fgvc_zoo head, None for a plain timm model; backbone: the timm model the name builds on, None for a
    generic head (`lfd`: its backbone is an argument), the whole architecture for a plain timm model; tag: the
    pretrained tag, '' without one.
    """

    head: str | None
    backbone: str | None
    tag: str


def split_model_name(name: str, heads: Collection[str] | None = None) -> ModelName:
    """Split a `<head>_<backbone>[.tag]` name (timm's `split_model_name_tag` takes off the tag); a name whose first
    `_`-part is no head in `heads` (default: the registered heads) is a plain timm model's."""
    architecture, tag = split_model_name_tag(name)
    head, _, backbone = architecture.partition('_')
    if head not in (_HEADS if heads is None else heads):
        return ModelName(None, architecture, tag)
    return ModelName(head, backbone or None, tag)


def head_name(architecture: str) -> str | None:
    """The head a model name or tag belongs to (`lfd_resnet50.a1_in1k` -> `lfd`); None for a plain timm model."""
    return split_model_name(architecture).head


def head_class(name: str) -> type[FgvcModel]:
    """The class of the head `name` (or of the head a model name or tag belongs to)."""
    head = head_name(name)
    if head is None:
        raise ValueError(f"'{name}' is not an fgvc_zoo head; the registered heads: {', '.join(list_heads())}.")
    return _HEADS[head]


def model_head_name(model: nn.Module) -> str | None:
    """The head a built model is (by class); None for a plain timm model."""
    return next((name for name, cls in _HEADS.items() if isinstance(model, cls)), None)


def head_models(filter: str = '', include_tags: bool = False) -> list[str]:
    """Every registered model name (and tag, with `include_tags`) of every head, as `timm.list_models` gives them."""
    return timm.list_models(filter, module=sorted(set(_HEAD_MODULES.values())), include_tags=include_tags)
