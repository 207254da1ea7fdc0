"""FGVC datasets: the native layouts of six FGVC benchmarks, image folders, Hugging Face datasets; robust image
decoding; timm transforms at the FGVC resolution; a synthetic dataset with known discriminative parts."""

from .dataset import LAYOUT_NAMES, SPLITS, FgvcDataset, carve_val, create_dataset, normalize_split
from .images import DatasetError, MissingSplitError, UnreadableDataError, UnreadableImageError, check_image, load_image
from .layouts import LAYOUTS, detect_layout
from .synthetic import GLYPHS, make_synthetic_fgvc, pointing_accuracy, read_part_boxes, synthetic_class_names
from .transforms import create_transforms, resolve_fgvc_data_config

__all__ = [
    'LAYOUT_NAMES',
    'FgvcDataset',
    'create_dataset',
    'normalize_split',
    'carve_val',
    'SPLITS',
    'DatasetError',
    'MissingSplitError',
    'UnreadableDataError',
    'UnreadableImageError',
    'check_image',
    'load_image',
    'LAYOUTS',
    'detect_layout',
    'GLYPHS',
    'make_synthetic_fgvc',
    'pointing_accuracy',
    'read_part_boxes',
    'synthetic_class_names',
    'create_transforms',
    'resolve_fgvc_data_config',
]
