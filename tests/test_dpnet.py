"""DP-Net: the part scores, pooling and three constraints against hand-computed values, and the head's contract.

Formulas are those of `docs/methods.md` section 2; every expected number below is worked out by hand
in the comment next to it.
"""

import math

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from fgvc_zoo.layers.parts import (
    assignment_loss,
    best_region_boxes,
    class_specific_loss,
    orthogonality_loss,
    part_owner,
    part_scores,
    pool_part_scores,
)
from fgvc_zoo.models import DpNet

NUM_CLASSES = 5


def _dpnet(backbone: str = 'test_resnet', **kwargs) -> DpNet:
    return timm.create_model('dpnet', backbone=backbone, num_classes=kwargs.pop('num_classes', NUM_CLASSES), **kwargs)


# ----------------------------------------------------------------------------------------- part scores and pooling


def test_parts_belong_to_classes_by_index_blocks_of_q():
    # q = 2, C = 3: parts [0, 2) -> class 0, [2, 4) -> class 1, [4, 6) -> class 2.
    assert part_owner(6, 2).tolist() == [0, 0, 1, 1, 2, 2]


def test_part_scores_project_regions_on_normalised_detectors():
    # Regions x_1 = (1, 2), x_2 = (3, -1); detectors u_1 = (3, 4) (norm 5), u_2 = (0, -2) (norm 2).
    features = torch.tensor([[1.0, 3.0], [2.0, -1.0]]).view(1, 2, 1, 2)
    detectors = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    # s_11 = (3 + 8) / 5 = 2.2, s_12 = (9 - 4) / 5 = 1; s_21 = -4 / 2 = -2, s_22 = 2 / 2 = 1.
    expected = torch.tensor([[2.2, 1.0], [-2.0, 1.0]]).view(1, 2, 1, 2)
    torch.testing.assert_close(part_scores(features, detectors), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    'pool, expected_part_0',
    [
        ('max', 6.0),
        ('avg', 3.0),  # (1 + 2 + 3 + 6) / 4
        ('lse', math.log((math.e**1 + math.e**2 + math.e**3 + math.e**6) / 4)),  # log-mean-exp = 5.0296...
    ],
)
def test_pooling_modes_against_hand_values(pool, expected_part_0):
    scores = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[2.0, 2.0], [2.0, 2.0]]]).view(1, 2, 2, 2)
    pooled = pool_part_scores(scores, pool)
    # A constant part pools to its constant in every mode.
    torch.testing.assert_close(pooled, torch.tensor([[expected_part_0, 2.0]]), atol=1e-6, rtol=0)


def test_lse_pooling_lies_between_avg_and_max():
    scores = torch.randn(2, 3, 4, 4)
    lse = pool_part_scores(scores, 'lse')
    assert (pool_part_scores(scores, 'avg') <= lse).all() and (lse <= pool_part_scores(scores, 'max')).all()


def test_unknown_pool_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="pool='sum'.*'max', 'lse', 'avg'"):
        pool_part_scores(torch.zeros(1, 1, 1, 1), 'sum')
    with pytest.raises(ValueError, match="pool='sum'"):
        _dpnet(pool='sum')


# ---------------------------------------------------------------------------------------- the three constraints


def test_orthogonal_detectors_give_zero_c_perp_whatever_their_length():
    assert orthogonality_loss(torch.tensor([[2.0, 0.0, 0.0], [0.0, -5.0, 0.0]])).item() == pytest.approx(0, abs=1e-6)


def test_c_perp_against_hand_value():
    # Normalised: e1, (1, 1) / sqrt(2), e2. Squared dot products of the pairs: 1/2, 0, 1/2, each counted for
    # (i, j) and (j, i): sum = 2; P^2 = 9 -> 2/9.
    detectors = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    assert orthogonality_loss(detectors).item() == pytest.approx(2 / 9, abs=1e-6)


def test_c_perp_is_positive_and_largest_for_identical_detectors():
    # Two identical detectors: (u^T u)^2 = 1 counted twice, / P^2 = 4 -> +0.5 (the minimised sign).
    assert orthogonality_loss(torch.tensor([[1.0, 2.0], [2.0, 4.0]])).item() == pytest.approx(0.5, abs=1e-6)


# S of 2 images x 2 parts x 2 regions (B, P, h, w):
# Image 1, region 1: scores (0, log 3) -> softmax (1/4, 3/4) -> entropy log 4 - (3/4) log 3.
#          region 2: scores (5, 5) -> (1/2, 1/2) -> entropy log 2.
# Image 2: both regions decisive (a 1000 margin: softmax exactly one-hot) -> 0.
TINY_S = torch.tensor(
    [
        [[0.0, 5.0], [math.log(3), 5.0]],
        [[1000.0, 0.0], [0.0, 1000.0]],
    ]
).view(2, 2, 1, 2)
TINY_S_IMAGE_1 = math.log(4) - 0.75 * math.log(3) + math.log(2)


def test_c_assign_against_hand_value():
    # The formula, - sum_r sum_p s_pr log s_pr per image, then the mean over the batch (= 2).
    assert assignment_loss(TINY_S).item() == pytest.approx((TINY_S_IMAGE_1 + 0) / 2, abs=1e-6)
    # 'mean' also divides by R (= 2).
    assert assignment_loss(TINY_S, reduction='mean').item() == pytest.approx((TINY_S_IMAGE_1 / 2 + 0) / 2, abs=1e-6)
    with pytest.raises(ValueError, match=r"reduction='max' is not one of \('sum', 'mean'\)"):
        assignment_loss(TINY_S, reduction='max')


def test_one_hot_assignment_gives_zero_c_assign_and_uniform_gives_r_log_p():
    decisive = torch.tensor([[1000.0, 0.0, 0.0], [0.0, 0.0, 1000.0]]).t().reshape(1, 3, 1, 2)
    assert assignment_loss(decisive).item() == pytest.approx(0, abs=1e-6)
    # 3 parts, 2 x 2 regions, each region uniform: log 3 per region, 4 log 3 per image (log 3 per region with 'mean').
    assert assignment_loss(torch.zeros(2, 3, 2, 2)).item() == pytest.approx(4 * math.log(3), abs=1e-6)
    assert assignment_loss(torch.zeros(2, 3, 2, 2), 'mean').item() == pytest.approx(math.log(3), abs=1e-6)


def test_c_assign_is_off_by_default_neither_computed_nor_listed():
    model = _dpnet().train()
    assert model.w_assign == 0.0
    out = model(torch.randn(2, 3, 64, 64), target=torch.tensor([0, 1]))
    assert 'assign' not in out.losses


@pytest.mark.parametrize('reduction', ['sum', 'mean'])
def test_the_model_weights_c_assign_of_its_part_scores_with_the_formulas_strength_by_default(reduction, monkeypatch):
    kwargs = {} if reduction == 'sum' else {'assign_reduction': 'mean'}
    model = _dpnet(num_classes=1, w_perp=0.0, w_assign=0.1, w_cs=0.0, **kwargs).train()
    assert model.assign_reduction == reduction
    features = torch.zeros(2, model.region_dim, 1, 2)
    monkeypatch.setattr(model, '_part_maps', lambda x: (features, TINY_S))  # S: 2 parts (q = 2 of 1 class)
    out = model(torch.zeros(2, 3, 64, 64), target=torch.tensor([0, 0]))
    hand = (TINY_S_IMAGE_1 + 0) / 2 if reduction == 'sum' else (TINY_S_IMAGE_1 / 2 + 0) / 2
    assert out.losses['assign'].item() == pytest.approx(hand, abs=1e-6)
    torch.testing.assert_close(out.loss, out.losses['ce'] + 0.1 * out.losses['assign'])
    with pytest.raises(ValueError, match=r"assign_reduction='max' is not one of \('sum', 'mean'\)"):
        _dpnet(assign_reduction='max')


def test_cs_against_hand_value():
    # C = 2, q = 2, P = 4. Class 0 owns parts 0, 1; class 1 owns parts 2, 3.
    # Not owned: |3| + |0.5| (class 0) + |-4| + |5| (class 1) = 12.5; P (C - 1) = 4 -> 3.125.
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-4.0, 5.0, 6.0, -7.0]])
    assert class_specific_loss(weight, parts_per_class=2).item() == pytest.approx(3.125, abs=1e-6)
    # C = 3, q = 1: the off-diagonal |V_ij|: 1 + 2 + 3 + 4 = 10; P (C - 1) = 6.
    weight = torch.tensor([[9.0, 1.0, -2.0], [3.0, 9.0, 0.0], [0.0, -4.0, 9.0]])
    assert class_specific_loss(weight, parts_per_class=1).item() == pytest.approx(10 / 6, abs=1e-6)


def test_a_classifier_using_only_its_own_parts_gives_zero_cs():
    weight = torch.tensor([[2.0, -3.0, 0.0, 0.0], [0.0, 0.0, -1.0, 4.0]])
    assert class_specific_loss(weight, parts_per_class=2).item() == pytest.approx(0, abs=1e-6)


def test_cs_rejects_a_v_that_does_not_match_q():
    with pytest.raises(ValueError, match='4 part columns but 2 classes x 3 parts_per_class'):
        class_specific_loss(torch.zeros(2, 4), parts_per_class=3)


# ------------------------------------------------------------------------------------------------------ best boxes


def test_best_region_box_is_centred_on_the_best_cell_and_clipped_to_the_image():
    # 2 x 2 cells on a 64 x 64 image (32 px cells). Part 0 peaks at row 1, column 0: centre (16, 48); a side
    # of 48 gives (-8, 24, 40, 72), clipped to (0, 24, 40, 64). Part 1 peaks at row 0, column 1: centre (48, 16)
    # -> (24, -8, 72, 40) -> (24, 0, 64, 40).
    scores = torch.tensor([[[0.0, 1.0], [7.0, 2.0]], [[0.0, 3.0], [1.0, 2.0]]]).view(1, 2, 2, 2)
    boxes, best = best_region_boxes(scores, (64, 64), side=48)
    torch.testing.assert_close(boxes, torch.tensor([[[0.0, 24.0, 40.0, 64.0], [24.0, 0.0, 64.0, 40.0]]]))
    torch.testing.assert_close(best, torch.tensor([[7.0, 3.0]]))


# ---------------------------------------------------------------------------------------------------- the model


def test_model_has_q_parts_per_class_and_v_over_parts():
    model = _dpnet(parts_per_class=3)
    assert model.parts.weight.shape == (15, model.backbone.num_features)
    assert model.head.weight.shape == (NUM_CLASSES, 15)
    with_global = _dpnet(parts_per_class=3, use_global=True)
    assert with_global.head.weight.shape == (NUM_CLASSES, 15 + model.backbone.num_features)
    assert with_global.part_participation().shape == (NUM_CLASSES, 15)


def test_reset_classifier_rebuilds_parts_and_classifier():
    model = _dpnet(parts_per_class=2)
    model.reset_classifier(3)
    assert model.num_parts == 6 and model.parts.weight.shape[0] == 6
    assert model.get_classifier().weight.shape == (3, 6)
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize('pool', ['max', 'avg', 'lse'])
def test_logits_are_v_of_the_pooled_normalised_part_scores(pool):
    model = _dpnet(pool=pool).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        regions = model.backbone(x).flatten(2)  # (B, D, R)
        unit = model.parts.weight / model.parts.weight.norm(dim=1, keepdim=True)
        scores = torch.einsum('pd,bdr->bpr', unit, regions)
        bag = {'max': scores.amax(2), 'avg': scores.mean(2), 'lse': scores.exp().mean(2).log()}[pool]
        torch.testing.assert_close(model(x), bag @ model.head.weight.t() + model.head.bias)


def test_train_output_names_every_constraint_and_weights_them():
    model = _dpnet(w_perp=1.0, w_assign=0.1, w_cs=0.1).train()
    out = model(torch.randn(2, 3, 64, 64), target=torch.tensor([0, 3]))
    assert set(out.losses) == {'ce', 'perp', 'assign', 'cs'}
    assert out.losses['perp'] == orthogonality_loss(model.parts.weight)
    assert out.losses['cs'] == class_specific_loss(model.head.weight, 2)
    losses = out.losses
    expected = losses['ce'] + 1.0 * losses['perp'] + 0.1 * losses['assign'] + 0.1 * losses['cs']
    torch.testing.assert_close(out.loss, expected)


def test_a_zero_weight_switches_its_constraint_off():
    model = _dpnet(w_perp=0.0, w_assign=0.5, w_cs=0.0).train()
    out = model(torch.randn(2, 3, 64, 64), target=torch.tensor([0, 3]))
    assert set(out.losses) == {'ce', 'assign'}
    torch.testing.assert_close(out.loss, out.losses['ce'] + 0.5 * out.losses['assign'])


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    optimizer.zero_grad()
    model(x, target=y).loss.backward()
    optimizer.step()


def _backbone_state(model: DpNet):
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics():
    model = _dpnet()  # freeze_backbone=True is the default
    assert not any(p.requires_grad for p in model.backbone.parameters())
    before, parts_before = _backbone_state(model), model.parts.weight.clone()
    _train_step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]))
    assert not model.backbone.training, 'model.train() must leave a frozen backbone in eval mode'
    assert any('running_mean' in k for k in before)
    after = model.backbone.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f'the frozen backbone changed: {changed[:5]}'
    assert not torch.equal(model.parts.weight, parts_before), 'the part detectors must train'


def test_an_unfrozen_backbone_fine_tunes_weights_and_batchnorm_statistics():
    model = _dpnet(freeze_backbone=False)
    before = _backbone_state(model)
    _train_step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]))
    assert model.backbone.training
    after = model.backbone.state_dict()
    weights = [k for k in before if k.endswith('weight') and not torch.equal(before[k], after[k])]
    statistics = [k for k in before if k.endswith('running_mean') and not torch.equal(before[k], after[k])]
    assert weights and statistics


def test_explain_gives_part_maps_class_map_best_boxes_and_participation():
    model = _dpnet(part_box_cells=1).eval()
    x = torch.randn(2, 3, 96, 96)  # 3 x 3 cells of 32 px
    explanation = model.explain(x)
    num_parts = 2 * NUM_CLASSES
    assert explanation.heatmaps['parts'].shape == (2, num_parts, 96, 96)
    assert explanation.heatmaps['predicted_class'].shape == (2, 1, 96, 96)
    assert explanation.boxes.shape == (2, num_parts, 4) and explanation.scores.shape == (2, num_parts)
    torch.testing.assert_close(explanation.extras['part_participation'], model.head.weight)
    # With one-cell boxes, each part's box is exactly the 32 px cell where its score is largest.
    with torch.no_grad():
        scores = part_scores(model.backbone(x), model.parts.weight)
    best, cell = scores.flatten(2).max(dim=2)
    row, col = cell // 3, cell % 3
    expected = torch.stack([col * 32, row * 32, col * 32 + 32, row * 32 + 32], dim=-1).float()
    torch.testing.assert_close(explanation.boxes, expected)
    torch.testing.assert_close(explanation.scores, best)


def test_default_boxes_are_three_strides_wide_and_inside_the_image():
    model = _dpnet().eval()
    x = torch.randn(2, 3, 160, 160)  # 5 x 5 cells of 32 px, boxes of 96 px
    explanation = model.explain(x)
    boxes = explanation.boxes
    assert (boxes >= 0).all() and (boxes <= 160).all()
    sides = boxes[..., 2:] - boxes[..., :2]
    assert (sides > 0).all() and (sides <= 96).all()
    # By hand: cell k's centre is 32 k + 16; the box spans centre -/+ 48, clipped to [0, 160].
    low, high = torch.tensor([0.0, 0.0, 32.0, 64.0, 96.0]), torch.tensor([64.0, 96.0, 128.0, 160.0, 160.0])
    with torch.no_grad():
        scores = part_scores(model.backbone(x), model.parts.weight)
    best, cell = scores.flatten(2).max(dim=2)
    row, col = cell // 5, cell % 5
    torch.testing.assert_close(boxes, torch.stack([low[col], low[row], high[col], high[row]], dim=-1))
    torch.testing.assert_close(explanation.scores, best)
    assert ((col == 0) | (col == 4) | (row == 0) | (row == 4)).any()  # a clipped border box is among them


@pytest.mark.parametrize('use_global', [False, True])
def test_predicted_class_map_sums_the_classifier_over_parts_per_region(use_global):
    # A 32 px image has one cell: the class map there is sum_p V_kp s_p (+ V_k,global x), i.e. logit - bias.
    model = _dpnet(use_global=use_global).eval()
    explanation = model.explain(torch.randn(2, 3, 32, 32))
    rows = torch.arange(2)
    expected = explanation.logits[rows, explanation.labels] - model.head.bias[explanation.labels]
    class_map = explanation.heatmaps['predicted_class']
    torch.testing.assert_close(class_map, expected.view(2, 1, 1, 1).expand_as(class_map))


def test_pretrained_weights_for_other_classes_drop_parts_and_classifier(tmp_path):
    source = _dpnet()
    save_file(source.state_dict(), str(tmp_path / 'model.safetensors'))
    model = timm.create_model(
        'dpnet',
        backbone='test_resnet',
        num_classes=3,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')),
    )
    assert model.parts.weight.shape[0] == 6 and model.head.weight.shape == (3, 6)
    loaded, saved = model.backbone.state_dict(), source.backbone.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_named_variants_are_registered():
    assert {'dpnet', 'dpnet_resnet50', 'dpnet_vit_base_patch16_224'} <= set(timm.list_models('dpnet*'))
    assert timm.models.get_pretrained_cfg('dpnet_resnet50').classifier == ('parts', 'head')
