"""Part detectors and the three DP-Net constraints (Sicre et al., ICIP 2023), as plain functions of U, S and V.

Notation of `docs/methods.md` section 2: U (P, D) part detectors, one per row; S (B, P, h, w) part
scores of the h x w regions; V (C, P) the classifier's part weights; q parts per class, part p belongs to class
p // q. Each loss is a scalar that is minimised.
"""

import math

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from .cam import class_activation_maps

__all__ = [
    'PART_POOLS',
    'ASSIGN_REDUCTIONS',
    'part_owner',
    'part_scores',
    'pool_part_scores',
    'orthogonality_loss',
    'assignment_loss',
    'class_specific_loss',
    'best_region_boxes',
]

PART_POOLS = ('max', 'lse', 'avg')


def part_owner(num_parts: int, parts_per_class: int, device: torch.device = None) -> torch.Tensor:
    """The class owning each part: parts [q i, q (i + 1)) belong to class i (0-based), a (P,) index tensor."""
    return torch.arange(num_parts, device=device) // parts_per_class


def part_scores(features: torch.Tensor, detectors: torch.Tensor) -> torch.Tensor:
    """s_pr = u_p^T x_r / ||u_p||: (B, D, h, w) region descriptors and (P, D) detectors -> (B, P, h, w).

    Detectors are normalised at use, so a score measures a region along a direction, not the detector's length.
    """
    return class_activation_maps(features, F.normalize(detectors, dim=1))


def pool_part_scores(scores: torch.Tensor, pool: str = 'max') -> torch.Tensor:
    """The bag-of-parts vector b_p of (B, P, h, w) scores, pooled over the regions: (B, P).

    'max': b_p = max_r s_pr, the part's most activating region. 'avg': the mean over regions. 'lse': the
    log-mean-exp log((1/R) sum_r exp(s_pr)), a smooth max that lies between 'avg' and 'max'.
    """
    scores = scores.flatten(2)
    if pool == 'max':
        return scores.amax(dim=2)
    if pool == 'avg':
        return scores.mean(dim=2)
    if pool == 'lse':
        return torch.logsumexp(scores, dim=2) - math.log(scores.shape[2])
    raise ValueError(f"pool='{pool}' is not one of {PART_POOLS}.")


def orthogonality_loss(detectors: torch.Tensor) -> torch.Tensor:
    """C_perp = (1 / P^2) sum_{i != j} (u_i^T u_j)^2 on l2-normalised rows of U (P, D): 0 for orthogonal parts.

    The slides print it with a minus sign, but the goal is parts different from one another, so it is minimised
    with a plus sign.
    """
    unit = F.normalize(detectors, dim=1)
    gram = unit @ unit.t()
    num_parts = detectors.shape[0]
    off_diagonal = ~torch.eye(num_parts, dtype=torch.bool, device=detectors.device)
    # A masked sum rather than gram[off_diagonal]: boolean indexing has a data-dependent size (torch.compile).
    return torch.where(off_diagonal, gram.pow(2), 0).sum() / num_parts**2


ASSIGN_REDUCTIONS = ('sum', 'mean')


def assignment_loss(scores: torch.Tensor, reduction: str = 'sum') -> torch.Tensor:
    """C_Assign: entropy of the softmax over parts of each region's scores, per image, averaged over the batch.

    The slides write C_Assign = - sum_r sum_p s_pr log s_pr (after a softmax over parts, for each region r) for one
    image. `reduction='sum'` is that formula: the sum over the R = h w regions (mean over the batch only), so a
    weight has the formula's strength, which grows with R (196 regions at 448 px on a stride-32 backbone).
    `reduction='mean'` divides it by R as well, so that a weight does not depend on the input size or the
    backbone's stride; the same strength then needs a weight R times larger. (B, P, h, w) scores -> scalar; 0
    when every region is assigned to one part.
    """
    if reduction not in ASSIGN_REDUCTIONS:
        raise ValueError(f"reduction='{reduction}' is not one of {ASSIGN_REDUCTIONS}.")
    log_assignment = F.log_softmax(scores.flatten(2), dim=1)
    entropy = -(log_assignment.exp() * log_assignment).sum(dim=1)  # (B, R)
    return entropy.sum(dim=1).mean() if reduction == 'sum' else entropy.mean()


def class_specific_loss(classifier_weight: torch.Tensor, parts_per_class: int) -> torch.Tensor:
    """CS(V) = 1 / (P (C - 1)) sum_i sum_{j not owned by i} |V_ij| for V (C, P): 0 when classes use only their parts.

    The absolute value (a choice) keeps the term from running to minus infinity through negative weights.
    """
    num_classes, num_parts = classifier_weight.shape
    if num_classes < 2:
        raise ValueError(
            f'class_specific_loss needs at least 2 classes, got V of shape {tuple(classifier_weight.shape)}.'
        )
    if num_parts != num_classes * parts_per_class:
        raise ValueError(
            f'V has {num_parts} part columns but {num_classes} classes x {parts_per_class} parts_per_class '
            f'= {num_classes * parts_per_class}.'
        )
    owner = part_owner(num_parts, parts_per_class, device=classifier_weight.device)
    not_owned = owner[None, :] != torch.arange(num_classes, device=classifier_weight.device)[:, None]
    return torch.where(not_owned, classifier_weight.abs(), 0).sum() / (num_parts * (num_classes - 1))


def best_region_boxes(
    scores: torch.Tensor,
    image_size: tuple[int, int],
    side: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each part's most activating region as a box: (B, P, h, w) scores -> (B, P, 4) xyxy pixel boxes, (B, P) scores.

    The box is a square of `side` pixels centred on the best cell's centre (the centre convention of
    `cell_boxes` and `upsample_maps`), clipped to the image, so a border cell keeps its centre on the part.
    """
    (h, w), (img_h, img_w) = scores.shape[-2:], image_size
    best_scores, best_cell = scores.flatten(2).max(dim=2)
    cy = (torch.div(best_cell, w, rounding_mode='floor') + 0.5) * (img_h / h)
    cx = (best_cell % w + 0.5) * (img_w / w)
    boxes = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=-1)
    return clip_boxes_to_image(boxes, (img_h, img_w)), best_scores
