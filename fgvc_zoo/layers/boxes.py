"""Box proposals from a score map, batched NMS with static output shapes, and batched crop-and-zoom.

Every function works on the whole batch at once: no Python loop over images, so the cost does not grow with
batch size in interpreter overhead and the shapes stay static for `torch.compile`.
"""

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou, roi_align

__all__ = ['cell_boxes', 'select_boxes', 'crop_and_zoom']


def cell_boxes(
    map_size: tuple[int, int],
    image_size: tuple[int, int],
    region_sizes: Sequence[float],
    device: torch.device = None,
) -> torch.Tensor:
    """One square box per map cell and region size, centred on the cell and shifted to lie inside the image.

    `region_sizes` are fractions of the shorter image side (LFD: 160 / 448). Returns (S * h * w, 4) xyxy boxes
    in image pixels, ordered size-major then row-major, matching `scores.flatten()` of an (S, h, w) score map.
    """
    (h, w), (img_h, img_w) = map_size, image_size
    cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (img_h / h)
    cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (img_w / w)
    cy, cx = torch.meshgrid(cy, cx, indexing='ij')
    boxes = []
    for fraction in region_sizes:
        side = fraction * min(img_h, img_w)
        x1 = (cx - side / 2).clamp(0, img_w - side)
        y1 = (cy - side / 2).clamp(0, img_h - side)
        boxes.append(torch.stack([x1, y1, x1 + side, y1 + side], dim=-1).reshape(-1, 4))
    return torch.cat(boxes)


def select_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    num: int,
    iou_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `num` boxes per image after NMS, best first: (K, 4) boxes, (B, K) scores -> (B, num, 4), (B, num).

    When NMS leaves fewer than `num` boxes, the best suppressed boxes fill the remaining slots, so that the
    output shape never depends on the data.

    Greedy NMS is run for `num` rounds only ("take the best box still alive, kill the boxes that overlap it by more
    than `iou_threshold`"), which gives its first `num` survivors exactly; each round computes the IoU of the box it
    takes with all K boxes, num x B x K IoUs in all. Every shape is static, so `torch.compile(fullgraph=True)`, CUDA
    graphs and ONNX take the whole head. Ties in score go to the lower box index, as in the stable sort
    torchvision's NMS uses.
    """
    batch_size, num_boxes = scores.shape
    if num > num_boxes:
        raise ValueError(f'Asked for {num} boxes but the score map only proposes {num_boxes}.')
    boxes_fp32 = boxes.float()  # IoUs in float32 whatever the boxes' dtype, as torchvision's NMS computes them
    # by_score[b, r]: the index of image b's r-th best box. The loop works in rank space (position r, the r-th best).
    by_score = _stable_best_first(scores.float())
    ranks = torch.arange(num_boxes, device=scores.device).expand(batch_size, -1)
    alive = torch.ones(batch_size, num_boxes, dtype=torch.bool, device=scores.device)
    kept = torch.zeros_like(alive)
    for _ in range(num):
        # The best alive box; in a row with none left, `best` is meaningless and `alive.any` masks it out.
        best = alive.to(torch.uint8).argmax(dim=1, keepdim=True)
        is_best = (ranks == best) & alive.any(dim=1, keepdim=True)
        taken = boxes_fp32[by_score.gather(1, best)[:, 0]]  # (B, 4)
        overlaps = box_iou(taken, boxes_fp32).gather(1, by_score) > iou_threshold
        kept = kept | is_best
        alive = alive & ~overlaps & ~is_best
    # Survivors first, then the suppressed boxes, each group best first: the key has no ties.
    top = (kept.long() * num_boxes + (num_boxes - 1 - ranks)).topk(num, dim=1).indices
    order = by_score.gather(1, top)
    return boxes[order], scores.gather(1, order)


def _stable_best_first(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of (B, K) scores best first, equal scores in index order.

    ONNX has no stable sort; its TopK returns equal values in index order (the operator's spec), so an ONNX export
    takes a full-length TopK, which PyTorch's `topk` does not promise for ties.
    """
    if torch.onnx.is_in_onnx_export():
        return scores.topk(scores.shape[1], dim=1).indices
    return scores.argsort(dim=1, descending=True, stable=True)


def crop_and_zoom(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop every (B, N, 4) box out of its (B, C, H, W) image and resize it to size x size: (B * N, C, size, size).

    One `roi_align` call with pixel-exact alignment is bilinear resampling of each box (sampling adapts to the
    box size, so boxes larger than `size` are averaged rather than aliased). Half-precision images are resampled in
    float32 and cast back, as torchvision's autocast does: its CPU kernel has no bfloat16 or float16 (a model cast
    to bfloat16 would fail there).
    """
    batch_size, num = boxes.shape[:2]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    image_index = torch.arange(batch_size, device=boxes.device, dtype=boxes.dtype).repeat_interleave(num)
    rois = torch.cat([image_index[:, None], boxes.reshape(-1, 4)], dim=1).to(work.dtype)
    crops = roi_align(work, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return crops.to(images.dtype)
