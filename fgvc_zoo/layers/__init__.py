from .boxes import cell_boxes, crop_and_zoom, select_boxes
from .cam import class_activation_maps, smooth_maps, upsample_maps
