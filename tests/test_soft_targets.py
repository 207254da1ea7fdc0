"""Soft targets (mixup, cutmix, label smoothing) reach every head's cross-entropy as the distributions they are.

Each head declares here which of its loss terms, at which optimiser step, is the cross-entropy of the logits it
returns; the test computes that loss by hand, -sum_k t_k log softmax(z)_k averaged over the batch, and checks the
targets are soft enough that using their arg-max instead gives another number. A new head must add its row.
"""

import math

import pytest
import timm
import torch

NUM_CLASSES = 5
# head -> (tiny model arguments, [(step, loss term that is the cross-entropy of the step's returned logits)])
CROSS_ENTROPY_TERMS = {
    'lfd': (dict(zoom_size=32, region_sizes=(0.35, 0.5)), [(0, 'hybrid')]),
    'dpnet': ({}, [(0, 'ce')]),
    'iagn': (dict(mid_channels=8, feature_channels=16, hidden_features=8), [(0, 'ce_stage1'), (1, 'ce_stage2')]),
}
# LFD's image-level ablation and its CAM baseline return the image logits, so its `image` term is checked there.
EXTRA_CASES = [
    ('lfd', dict(zoom_size=32, region_sizes=(0.35, 0.5), hybrid=False), 0, 'image'),
    ('lfd', dict(zoom_size=32, region_sizes=(0.35, 0.5), cam_baseline=True), 0, 'image'),
]
SOFT = torch.tensor(
    [
        [0.7, 0.3, 0.0, 0.0, 0.0],
        [0.0, 0.1, 0.0, 0.5, 0.4],
        [0.2, 0.2, 0.2, 0.2, 0.2],
    ]
)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of soft targets, written out: mean over images of -sum_k t_k log(e^z_k / sum_j e^z_j)."""
    z = logits.double()
    log_softmax = z - z.exp().sum(dim=1, keepdim=True).log()
    return -(target.double() * log_softmax).sum(dim=1).mean()


def _cases():
    cases = [(head, args, step, term) for head, (args, terms) in CROSS_ENTROPY_TERMS.items() for step, term in terms]
    return cases + EXTRA_CASES


def test_every_registered_head_declares_its_cross_entropy_terms(head):
    assert head in CROSS_ENTROPY_TERMS, f'add {head} to CROSS_ENTROPY_TERMS: which loss term is its cross-entropy'


def test_the_hand_written_cross_entropy_against_numbers():
    # logits (0, ln 3): softmax (1/4, 3/4); target (1/2, 1/2): 1/2 ln 4 + 1/2 ln(4/3) = ln 4 - 1/2 ln 3
    value = soft_cross_entropy(torch.tensor([[0.0, math.log(3)]]), torch.tensor([[0.5, 0.5]]))
    assert value.item() == pytest.approx(math.log(4) - 0.5 * math.log(3))


@pytest.mark.parametrize(('name', 'args', 'step', 'term'), _cases())
def test_a_heads_cross_entropy_of_soft_targets_is_the_hand_computed_one(name, args, step, term):
    model = timm.create_model(name, backbone='test_resnet', num_classes=NUM_CLASSES, **args).train()
    out = model(torch.randn(len(SOFT), 3, 64, 64), target=SOFT, step=step)
    expected = soft_cross_entropy(out.logits.detach(), SOFT)
    assert out.losses[term].item() == pytest.approx(expected.item(), rel=1e-5)
    arg_max = soft_cross_entropy(out.logits.detach(), torch.eye(NUM_CLASSES)[SOFT.argmax(dim=1)])
    assert abs(arg_max.item() - expected.item()) > 1e-3  # the targets are soft enough to tell the two apart
