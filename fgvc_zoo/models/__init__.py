"""The heads and what a model user or head author needs: the head classes, the contract (`FgvcModel` and what it
returns and declares), the registration decorator and builder, the cfg helpers, and the registry's list and split
functions. Hub I/O is `fgvc_zoo.hub`'s, weight conversion `fgvc_zoo.convert`'s."""

from ._backbone import Backbone
from ._builder import build_fgvc_model
from ._cfgs import DEFAULT_BACKBONE, FGVC_DATASETS, POPULAR_BACKBONES, PUBLISHED_TAGS, fgvc_cfg, generate_head_cfgs
from ._contract import (
    HEAD_POOL,
    BackbonePass,
    Explanation,
    ExplanationChart,
    ExplanationPanel,
    FgvcModel,
    FgvcOutput,
    PaperInfo,
)
from ._registry import (
    ModelName,
    head_class,
    head_models,
    head_name,
    list_heads,
    model_head_name,
    register_head,
    split_model_name,
)
from .dpnet import DpNet
from .iagn import Iagn
from .lfd import Lfd

__all__ = [
    'Lfd',
    'DpNet',
    'Iagn',
    'FgvcModel',
    'FgvcOutput',
    'BackbonePass',
    'Explanation',
    'ExplanationChart',
    'ExplanationPanel',
    'PaperInfo',
    'HEAD_POOL',
    'Backbone',
    'register_head',
    'build_fgvc_model',
    'fgvc_cfg',
    'generate_head_cfgs',
    'DEFAULT_BACKBONE',
    'FGVC_DATASETS',
    'POPULAR_BACKBONES',
    'PUBLISHED_TAGS',
    'ModelName',
    'head_class',
    'head_models',
    'head_name',
    'list_heads',
    'model_head_name',
    'split_model_name',
]
