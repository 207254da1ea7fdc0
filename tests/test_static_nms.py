"""Static-shape region selection keeps the semantics of torchvision's batched NMS + the best-suppressed fill."""

import pytest
import torch
from torchvision.ops import batched_nms

from fgvc_zoo.layers import cell_boxes, select_boxes


def reference_select_boxes(boxes, scores, num, iou_threshold):
    """The data-dependent implementation static NMS replaced: torchvision's batched_nms, then the fill."""
    batch_size, num_boxes = scores.shape
    image_index = torch.arange(batch_size).repeat_interleave(num_boxes)
    keep = batched_nms(boxes.repeat(batch_size, 1), scores.flatten().float(), image_index, iou_threshold)
    kept = torch.zeros(batch_size * num_boxes, dtype=torch.bool)
    kept[keep] = True
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    survivors_first = kept.view(batch_size, num_boxes).gather(1, by_score).to(torch.uint8)
    order = by_score.gather(1, survivors_first.argsort(dim=1, descending=True, stable=True))[:, :num]
    return boxes[order], scores.gather(1, order)


def _score_maps(kind, batch_size, map_size, num_sizes, generator):
    h, w = map_size
    if kind == 'continuous':
        cells = torch.rand(batch_size, h * w, generator=generator)
    elif kind == 'ties':  # a few distinct levels: many exact ties between cells
        cells = torch.randint(0, 4, (batch_size, h * w), generator=generator).float() / 4
    else:  # constant: every box ties with every other
        cells = torch.full((batch_size, h * w), 0.5)
    # LFD scores every region size of a cell with the cell's attention: exact ties across sizes.
    return cells.repeat(1, num_sizes)


@pytest.mark.parametrize('kind', ['continuous', 'ties', 'constant'])
@pytest.mark.parametrize(
    'map_size, image_size, region_sizes, num, iou',
    [
        ((14, 14), (448, 448), (160 / 448,), 6, 0.25),  # LFD's paper setting
        ((7, 7), (224, 224), (0.36, 0.5), 6, 0.25),
        ((3, 3), (96, 96), (0.35, 0.5), 4, 0.25),  # tiny maps: NMS leaves fewer than num, the fill kicks in
        ((4, 5), (128, 160), (0.3,), 8, 0.5),
        ((6, 6), (192, 192), (0.5, 0.7), 12, 0.1),
    ],
)
def test_static_nms_selects_the_boxes_of_batched_nms_and_the_fill(kind, map_size, image_size, region_sizes, num, iou):
    generator = torch.Generator().manual_seed(0)
    boxes = cell_boxes(map_size, image_size, region_sizes)
    fills = 0
    for _ in range(20):
        scores = _score_maps(kind, 5, map_size, len(region_sizes), generator)
        expected_boxes, expected_scores = reference_select_boxes(boxes, scores, num, iou)
        selected_boxes, selected_scores = select_boxes(boxes, scores, num, iou)
        assert torch.equal(selected_boxes, expected_boxes)
        assert torch.equal(selected_scores, expected_scores)
        image_index = torch.arange(5).repeat_interleave(boxes.shape[0])
        survivors = batched_nms(boxes.repeat(5, 1), scores.flatten(), image_index, iou).bincount(minlength=5)
        fills += int((survivors < num).sum())
    if map_size == (3, 3):
        assert fills > 0, 'this setting must exercise the fill of suppressed boxes'


def test_static_nms_matches_on_random_boxes_with_duplicates():
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        xy = torch.randint(0, 60, (40, 2), generator=generator).float()
        wh = torch.randint(4, 40, (40, 2), generator=generator).float()
        boxes = torch.cat([xy, xy + wh], dim=1)
        boxes[30:] = boxes[:10]  # identical boxes
        scores = torch.randint(0, 6, (3, 40), generator=generator).float()
        for iou in (0.0, 0.3, 0.7):
            expected = reference_select_boxes(boxes, scores, 10, iou)
            selected = select_boxes(boxes, scores, 10, iou)
            assert torch.equal(selected[0], expected[0]) and torch.equal(selected[1], expected[1])


def test_static_nms_refuses_more_boxes_than_candidates():
    with pytest.raises(ValueError, match='only proposes 4'):
        select_boxes(cell_boxes((2, 2), (64, 64), (0.5,)), torch.rand(1, 4), 5, 0.25)
