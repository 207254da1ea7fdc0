"""The export format and its publishing: an export folder (`model.safetensors`, timm's `config.json`, the model
card, `results.json`, optionally `model.onnx`) written and read (`folder`), its card (`card`), its ONNX file (`onnx`)
and its upload to the Hugging Face Hub (`upload`). Sits above `models` and `data`, below the trainer and inference.

The one public home of Hub I/O: also the names of `fgvc_zoo.models.hub_io` (cfg entries of our repos,
safetensors-only loads, Hub errors, weights records, backbone weights), which live below `hub` because the model
builder needs them.
"""

from ..models.hub_io import (
    HUB_ORG,
    HUB_PROBE_TIMEOUT,
    PICKLE_WEIGHTS,
    WEIGHTS_NAME,
    hub_cfg,
    hub_errors,
    hub_weights_file,
    load_backbone_weights,
    local_weights_record,
    resolve_weights_file,
    safetensors_only,
    weights_record,
)
from .card import NOT_RECORDED, RESULTS_NAME, base_model, model_card, read_template
from .folder import (
    CARD_NAME,
    CONFIG_NAME,
    PUSHED_FILES,
    check_export_folder,
    describe_pretrained,
    load_model,
    model_label_names,
    pretrained_weights_of,
    read_label_names,
    read_results,
    save_pretrained,
    share_file,
    write_card,
)
from .onnx import ONNX_NAME, export_onnx, read_onnx_metadata
from .upload import push, push_space

__all__ = [
    'HUB_ORG',
    'HUB_PROBE_TIMEOUT',
    'PICKLE_WEIGHTS',
    'WEIGHTS_NAME',
    'CONFIG_NAME',
    'CARD_NAME',
    'PUSHED_FILES',
    'RESULTS_NAME',
    'ONNX_NAME',
    'NOT_RECORDED',
    'hub_cfg',
    'hub_errors',
    'safetensors_only',
    'weights_record',
    'local_weights_record',
    'hub_weights_file',
    'resolve_weights_file',
    'load_backbone_weights',
    'save_pretrained',
    'load_model',
    'check_export_folder',
    'describe_pretrained',
    'model_label_names',
    'pretrained_weights_of',
    'read_label_names',
    'read_results',
    'share_file',
    'write_card',
    'model_card',
    'read_template',
    'base_model',
    'export_onnx',
    'read_onnx_metadata',
    'push',
    'push_space',
]
