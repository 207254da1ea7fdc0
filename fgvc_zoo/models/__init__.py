from ._backbone import Backbone, check_backbone_name, create_backbone_model
from ._base import POPULAR_BACKBONES, PUBLISHED_TAGS, Explanation, FgvcModel, FgvcOutput, build_fgvc_model
from .dpnet import DpNet
from .iagn import Iagn
from .lfd import Lfd

__all__ = [
    'Backbone',
    'check_backbone_name',
    'create_backbone_model',
    'POPULAR_BACKBONES',
    'PUBLISHED_TAGS',
    'Explanation',
    'FgvcModel',
    'FgvcOutput',
    'build_fgvc_model',
    'Lfd',
    'DpNet',
    'Iagn',
]
