from ._backbone import Backbone, check_backbone_name, create_backbone_model
from ._base import (
    POPULAR_BACKBONES,
    PUBLISHED_TAGS,
    BackbonePass,
    Explanation,
    ExplanationChart,
    ExplanationPanel,
    FgvcModel,
    FgvcOutput,
    PaperInfo,
    build_fgvc_model,
    head_class,
    head_models,
    head_name,
    list_heads,
    model_head_name,
    register_head,
)
from .dpnet import DpNet
from .iagn import Iagn
from .lfd import Lfd

__all__ = [
    'Backbone',
    'check_backbone_name',
    'create_backbone_model',
    'POPULAR_BACKBONES',
    'PUBLISHED_TAGS',
    'BackbonePass',
    'Explanation',
    'ExplanationChart',
    'ExplanationPanel',
    'FgvcModel',
    'FgvcOutput',
    'PaperInfo',
    'build_fgvc_model',
    'head_class',
    'head_models',
    'head_name',
    'list_heads',
    'model_head_name',
    'register_head',
    'Lfd',
    'DpNet',
    'Iagn',
]
