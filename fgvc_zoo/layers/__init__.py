from .boxes import cell_boxes, crop_and_zoom, select_boxes
from .cam import class_activation_maps, min_max_scale, smooth_maps, upsample_maps
from .distill import distillation_loss
from .jigsaw import jigsaw
from .norm_stats import SecondaryNormStats, freeze_stats_in_recompute, frozen_norm_stats
from .parts import (
    PART_POOLS,
    assignment_loss,
    best_region_boxes,
    class_specific_loss,
    orthogonality_loss,
    part_owner,
    part_scores,
    pool_part_scores,
)

__all__ = [
    'cell_boxes',
    'crop_and_zoom',
    'select_boxes',
    'class_activation_maps',
    'smooth_maps',
    'upsample_maps',
    'min_max_scale',
    'PART_POOLS',
    'assignment_loss',
    'best_region_boxes',
    'class_specific_loss',
    'orthogonality_loss',
    'part_owner',
    'part_scores',
    'pool_part_scores',
    'distillation_loss',
    'jigsaw',
    'SecondaryNormStats',
    'freeze_stats_in_recompute',
    'frozen_norm_stats',
]
