from ._backbone import Backbone, check_backbone_name, create_backbone_model
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
from ._convert import convert_state_dict, imagenet_top1, read_name_map, read_state_dict, save_converted
from ._hub import (
    HUB_ORG,
    PICKLE_WEIGHTS,
    WEIGHTS_NAME,
    hub_cfg,
    hub_errors,
    local_weights_record,
    safetensors_only,
    weights_record,
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
from ._weights import resolve_weights_file
from .dpnet import DpNet
from .iagn import Iagn
from .lfd import Lfd

__all__ = [
    'convert_state_dict',
    'imagenet_top1',
    'read_name_map',
    'read_state_dict',
    'save_converted',
    'Backbone',
    'check_backbone_name',
    'create_backbone_model',
    'DEFAULT_BACKBONE',
    'FGVC_DATASETS',
    'HEAD_POOL',
    'POPULAR_BACKBONES',
    'PUBLISHED_TAGS',
    'BackbonePass',
    'Explanation',
    'ExplanationChart',
    'ExplanationPanel',
    'FgvcModel',
    'FgvcOutput',
    'ModelName',
    'PaperInfo',
    'build_fgvc_model',
    'fgvc_cfg',
    'generate_head_cfgs',
    'head_class',
    'head_models',
    'head_name',
    'list_heads',
    'model_head_name',
    'register_head',
    'split_model_name',
    'HUB_ORG',
    'PICKLE_WEIGHTS',
    'WEIGHTS_NAME',
    'hub_cfg',
    'hub_errors',
    'safetensors_only',
    'weights_record',
    'local_weights_record',
    'resolve_weights_file',
    'Lfd',
    'DpNet',
    'Iagn',
]
