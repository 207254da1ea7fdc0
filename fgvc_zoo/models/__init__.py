from ._backbone import Backbone, check_backbone_name, create_backbone_model
from ._base import POPULAR_BACKBONES, Explanation, FgvcModel, FgvcOutput, build_fgvc_model
from .lfd import Lfd
from .dpnet import DpNet
from .iagn import Iagn
