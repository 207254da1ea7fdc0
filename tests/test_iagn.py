"""IAGN (a reconstruction from the abstract, docs/methods.md section 3): jigsaw, distillation, attended box and the
progressive schedule, on timm's tiny test_resnet with shrunk head widths."""

import math

import pytest
import timm
import torch
from safetensors.torch import save_file

from fgvc_zoo.layers import distillation_loss, jigsaw
from fgvc_zoo.models import Iagn

IMG = 64
NUM_CLASSES = 5
TINY = dict(mid_channels=8, feature_channels=16, hidden_features=8)


def _model(**kwargs) -> Iagn:
    kwargs = {**TINY, 'num_classes': NUM_CLASSES, **kwargs}
    return timm.create_model('iagn', backbone='test_resnet', **kwargs)


@pytest.fixture
def batch():
    return torch.randn(4, 3, IMG, IMG), torch.tensor([0, 1, 3, 4])


def _cells(images: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n * n, C * cell_h * cell_w): every cell of every image as one row."""
    b, c, h, w = images.shape
    cells = images.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(b, n * n, -1)


@pytest.mark.parametrize('n', [2, 4, 8])
def test_jigsaw_is_a_permutation_of_cells(n):
    images = torch.randn(3, 2, 16, 16)
    shuffled = jigsaw(images, n)
    before, after = _cells(images, n), _cells(shuffled, n)
    # Every output cell is exactly one input cell of the same image, and each input cell is used once.
    match = (after[:, :, None] == before[:, None, :]).all(dim=-1)
    assert (match.sum(dim=2) == 1).all()
    assert (match.sum(dim=1) == 1).all()
    assert torch.equal(shuffled.flatten(1).sort(dim=1).values, images.flatten(1).sort(dim=1).values)


def test_jigsaw_shuffles_every_image_with_its_own_permutation():
    images = torch.arange(16.0).view(1, 1, 4, 4).expand(32, 1, 4, 4)
    shuffled = jigsaw(images, 4)
    assert not torch.equal(shuffled, images)
    assert len({tuple(s.flatten().tolist()) for s in shuffled}) > 1


def test_jigsaw_keeps_leftover_pixels_and_granularity_one():
    images = torch.randn(2, 3, 9, 9)
    shuffled = jigsaw(images, 4)  # 2 x 2 pixel cells cover 8 x 8; row 8 and column 8 stay put
    assert torch.equal(shuffled[..., 8, :], images[..., 8, :])
    assert torch.equal(shuffled[..., :, 8], images[..., :, 8])
    assert torch.equal(jigsaw(images, 1), images)
    with pytest.raises(ValueError, match='cannot be cut'):
        jigsaw(images, 10)


def test_distillation_loss_hand_computed():
    # T = 2: teacher logits (2 ln 3, 0) soften to (3/4, 1/4); student (0, 0) to (1/2, 1/2).
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    student = torch.zeros(1, 2, requires_grad=True)
    expected = 2**2 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() > 0
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_distillation_loss_zero_when_student_equals_teacher():
    logits = torch.randn(4, NUM_CLASSES)
    assert distillation_loss(logits, logits.clone(), temperature=4.0).abs().item() < 1e-6
    assert distillation_loss(logits, logits + 10.0, temperature=4.0).abs().item() < 1e-5  # same softmax
    assert distillation_loss(logits, torch.randn(4, NUM_CLASSES), temperature=4.0).item() > 0


def test_attended_box_hand_computed():
    model = _model()
    attention = torch.zeros(2, 1, 8, 8)
    attention[0, 0, 2:4, 3:6] = 1.0
    attention[0, 0, 5, 1] = 0.6  # above half the max: extends the box down-left
    attention[0, 0, 7, 7] = 0.4  # below: ignored
    attention[1] = 0.4
    attention[1, 0, 7, 7] = 1.0
    boxes = model.attended_boxes(attention)
    # xyxy in pixels, one past the last pixel: rows 2..5 and columns 1..5; the single pixel (7, 7).
    assert boxes.tolist() == [[[1.0, 2.0, 6.0, 6.0]], [[7.0, 7.0, 8.0, 8.0]]]


def test_attended_box_inside_image_and_contains_attention_max(batch):
    x, _ = batch
    model = _model().eval()
    explanation = model.explain(x)
    attention = explanation.heatmaps['attention']
    boxes = explanation.boxes[:, 0]
    assert attention.shape == (4, 1, IMG, IMG) and explanation.boxes.shape == (4, 1, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= IMG).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    peak = attention.flatten(1).argmax(dim=1)
    row, col = peak // IMG, peak % IMG
    assert ((boxes[:, 0] <= col) & (col < boxes[:, 2]) & (boxes[:, 1] <= row) & (row < boxes[:, 3])).all()


def test_explain_maps_in_input_pixels(batch):
    x, _ = batch
    model = _model().eval()
    explanation = model.explain(x)
    stages = explanation.heatmaps['stages']
    assert stages.shape == (4, 3, IMG, IMG)
    assert stages.min() >= 0 and stages.max() <= 1 + 1e-6
    assert torch.allclose(explanation.heatmaps['attention'].flatten(1).amax(dim=1), torch.ones(4))
    assert ((explanation.scores > 0) & (explanation.scores <= 1 + 1e-6)).all()
    assert torch.equal(explanation.labels, explanation.logits.argmax(dim=1))
    assert torch.allclose(explanation.logits, model(x), atol=1e-5)


def test_box_score_is_the_attention_share_inside_the_box(batch):
    x, _ = batch
    # Threshold 0: the box is the whole image and holds all of the attention.
    whole = _model(attn_threshold=0.0).eval().explain(x)
    torch.testing.assert_close(whole.scores, torch.ones(4, 1))
    # A high threshold: a part of the image, scored by the attention summed over its pixel slice over the total.
    part = _model(attn_threshold=0.9).eval().explain(x)
    boxes = part.boxes[:, 0].int().tolist()
    for attention, (x1, y1, x2, y2), score in zip(part.heatmaps['attention'][:, 0], boxes, part.scores, strict=False):
        assert score.item() == pytest.approx((attention[y1:y2, x1:x2].sum() / attention.sum()).item(), rel=1e-5)
    assert (part.scores < 1).any()


def test_cell_scores_are_the_classifier_on_a_cell():
    """The CAM scores a cell as the classifier would score it as a pooled feature (eval mode)."""
    classifier = _model().stage_classifiers[0]
    for module in (classifier.norm_in, classifier.norm_hidden):
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
    cells = torch.randn(6, 16)
    assert torch.allclose(classifier.eval()(cells), classifier.forward_cells(cells), atol=1e-6)
    # In train mode it still uses, and does not update, the running statistics.
    running_mean = classifier.norm_in.running_mean.clone()
    assert torch.allclose(classifier.train().forward_cells(cells), classifier.eval()(cells), atol=1e-6)
    assert torch.equal(classifier.norm_in.running_mean, running_mean)


def test_inference_is_fused_image_plus_fused_zoom(batch):
    x, _ = batch
    model = _model(attn_threshold=0.0).eval()  # every pixel is attended: the box is the whole image
    assert model.explain(x).boxes.tolist() == [[[0.0, 0.0, IMG, IMG]]] * 4
    with torch.no_grad():
        fused = model.fused_classifier(torch.cat([f.amax(dim=(2, 3)) for f in model.stage_features(x)], dim=1))
        zoom = model.zoom(x, torch.tensor([[[0.0, 0.0, IMG, IMG]]]).expand(4, 1, 4))
        fused_zoom = model.fused_classifier(torch.cat([f.amax(dim=(2, 3)) for f in model.stage_features(zoom)], 1))
        assert torch.allclose(model(x), fused + fused_zoom, atol=1e-5)


def test_progressive_steps_update_only_their_part(batch):
    x, y = batch
    model = _model().train()
    assert model.num_train_steps == 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    backbone_stages = ['backbone.model.layer2.', 'backbone.model.layer3.', 'backbone.model.layer4.']
    for step in range(model.num_train_steps):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        output = model(x, target=y, step=step)
        output.loss.backward()
        optimizer.step()
        changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}

        def touched(prefix: str, changed: set = changed) -> bool:
            return any(name.startswith(prefix) for name in changed)

        if step < 3:  # stage step: this stage's head and the backbone up to this stage, nothing else
            stage = step + 1
            expected = {f'ce_stage{stage}'} | ({f'kd_stage{stage}'} if stage > 1 else set())
            assert set(output.losses) == expected
            assert output.logits.shape == (4, NUM_CLASSES)
            for other in range(3):
                assert touched(f'stage_convs.{other}.') == (other == step)
                assert touched(f'stage_classifiers.{other}.') == (other == step)
                assert touched(backbone_stages[other]) == (other <= step)
            assert not touched('fused_classifier.')
        else:  # fused step: the fused classifier, every stage conv and the backbone; stage classifiers are teachers
            assert set(output.losses) == {'ce_fused', 'kd_fused', 'ce_fused_zoom', 'kd_fused_zoom'}
            assert touched('fused_classifier.')
            assert all(touched(f'stage_convs.{k}.') and touched(backbone_stages[k]) for k in range(3))
            assert not touched('stage_classifiers.')
        assert touched('backbone.model.conv1.')


def test_step_losses_are_weighted_as_configured(batch):
    x, y = batch
    model = _model(kd_weight=0.5, fused_loss_weight=3.0).train()
    stage2 = model(x, target=y, step=1)
    assert stage2.loss.item() == pytest.approx((stage2.losses['ce_stage2'] + 0.5 * stage2.losses['kd_stage2']).item())
    fused = model(x, target=y, step=3)
    terms = fused.losses
    expected = 3.0 * (terms['ce_fused'] + terms['ce_fused_zoom']) + 0.5 * (terms['kd_fused'] + terms['kd_fused_zoom'])
    assert fused.loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match='out of range'):
        model(x, target=y, step=4)


def _constant_logits_model(**kwargs) -> Iagn:
    """Two classes, every classifier answering constant logits (d ln 3, -d ln 3): zero last-FC weights, a bias.

    The stage classifiers have d = -2, 1, 4, the fused one d = -1. With constant class maps the attended box is the
    whole image; each loss term is then a number of these logits alone, computed by hand below.
    """
    model = _model(num_classes=2, kd_temperature=2.0, kd_weight=0.5, fused_loss_weight=3.0, **kwargs).train()
    with torch.no_grad():
        for classifier, d in zip([*model.stage_classifiers, model.fused_classifier], (-2, 1, 4, -1), strict=True):
            classifier.fc.weight.zero_()
            classifier.fc.bias.copy_(torch.tensor([d, -d]) * math.log(3))
    return model


def test_step_and_folded_losses_hand_computed(batch):
    # Logits (d ln 3, -d ln 3) give p = (9^d, 1) / (9^d + 1) at T = 1 and (3^d, 1) / (3^d + 1) at T = 2.
    # Targets (0, 1): CE = (-ln p_0 of image 1 - ln p_1 of image 2) / 2. KD = T^2 KL(p_teacher || p_student), T = 2.
    x, _ = batch
    x, y = x[:2], torch.tensor([0, 1])
    ce_stage1 = (math.log(82) + math.log(82 / 81)) / 2  # d = -2: (1/82, 81/82)
    ce_stage2 = (math.log(10 / 9) + math.log(10)) / 2  # d = 1: (9/10, 1/10)
    ce_stage3 = (math.log(6562 / 6561) + math.log(6562)) / 2  # d = 4: (6561/6562, 1/6562)
    # Softened, T = 2: stage 1 (1/10, 9/10), stage 2 (3/4, 1/4), stage 3 (81/82, 1/82).
    kd_stage2 = 4 * (0.1 * math.log(0.1 / 0.75) + 0.9 * math.log(0.9 / 0.25))  # teacher stage 1, student stage 2
    kd_stage3 = 4 * (0.75 * math.log(0.75 / (81 / 82)) + 0.25 * math.log(0.25 / (1 / 82)))  # teacher stage 2
    # The fused head (d = -1: (1/10, 9/10), softened (1/4, 3/4)) on x and on the zoom, distilled from the mean of
    # the stage logits, d = (-2 + 1 + 4) / 3 = 1: softened (3/4, 1/4).
    ce_fused = (math.log(10) + math.log(10 / 9)) / 2
    kd_fused = 4 * (0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75))
    expected = [
        {'ce_stage1': ce_stage1},
        {'ce_stage2': ce_stage2, 'kd_stage2': kd_stage2},
        {'ce_stage3': ce_stage3, 'kd_stage3': kd_stage3},
        {'ce_fused': ce_fused, 'kd_fused': kd_fused, 'ce_fused_zoom': ce_fused, 'kd_fused_zoom': kd_fused},
    ]
    # kd_weight 0.5, fused_loss_weight 3.
    expected_losses = [
        ce_stage1,
        ce_stage2 + 0.5 * kd_stage2,
        ce_stage3 + 0.5 * kd_stage3,
        3 * 2 * ce_fused + 0.5 * 2 * kd_fused,
    ]
    progressive = _constant_logits_model()
    for step, (terms, loss) in enumerate(zip(expected, expected_losses, strict=True)):
        output = progressive(x, target=y, step=step)
        assert {name: t.item() for name, t in output.losses.items()} == pytest.approx(terms, rel=1e-5)
        assert output.loss.item() == pytest.approx(loss, rel=1e-5)

    folded = _constant_logits_model(progressive=False)
    assert folded.num_train_steps == 1
    output = folded(x, target=y)
    assert {name: t.item() for name, t in output.losses.items()} == pytest.approx(
        {name: t for terms in expected for name, t in terms.items()}, rel=1e-5
    )
    assert output.loss.item() == pytest.approx(sum(expected_losses), rel=1e-5)
    # The folded logits are the fused step's: fused(x) + fused(zoom), d = -2.
    torch.testing.assert_close(output.logits, torch.tensor([[-2.0, 2.0]] * 2) * math.log(3))


def test_registered_variants_and_arguments():
    expected = {'iagn', 'iagn_resnet50', 'iagn_convnext_tiny', 'iagn_vit_base_patch16_224'}
    assert expected <= set(timm.list_models('iagn*'))
    model = _model(num_stages=2, jigsaw_sizes=(4, 1))
    assert model.num_train_steps == 3 and model.num_features == 2 * 16 and model.head_hidden_size == 2 * 2 * 16
    assert model.backbone.stage_indices == [3, 4]
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.eval()(torch.randn(1, 3, IMG, IMG)).shape == (1, 7)
    with pytest.raises(ValueError, match='jigsaw_sizes'):
        _model(jigsaw_sizes=(8, 4))
    with pytest.raises(ValueError, match='attn_threshold'):
        _model(attn_threshold=1.5)


@pytest.mark.parametrize('stages', [2, 4])
def test_weights_for_other_classes_drop_every_stage_classifier(stages, tmp_path):
    # The class layers timm drops follow `num_stages`: 4 stage classifiers and the fused one for num_stages=4.
    save_file(_model(num_stages=stages).state_dict(), str(tmp_path / 'model.safetensors'))
    model = _model(
        num_stages=stages,
        num_classes=3,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')),
    )
    expected = tuple(f'stage_classifiers.{i}.fc' for i in range(stages)) + ('fused_classifier.fc',)
    assert model.pretrained_cfg['classifier'] == expected
    assert all(c.fc.out_features == 3 for c in [*model.stage_classifiers, model.fused_classifier])


def test_a_training_batch_of_one_is_a_clear_error():
    model = timm.create_model(
        'iagn', backbone='test_resnet', num_classes=3, mid_channels=8, feature_channels=16, hidden_features=8
    ).train()
    with pytest.raises(ValueError, match='batches of at least 2 images'):
        model(torch.randn(1, 3, 64, 64), target=torch.tensor([0]))


def _batches_tracked(module: torch.nn.Module) -> int:
    return int(module.num_batches_tracked)


def test_box_and_teacher_passes_leave_the_batchnorm_statistics_alone(batch):
    x, y = batch
    model = _model().train()
    stem, s1_conv_bn = model.backbone.model.bn1, model.stage_convs[0][0].bn
    counted = {
        'stem': stem,
        'stage1 conv': s1_conv_bn,
        'stage1 classifier': model.stage_classifiers[0].norm_in,
        'stage3 classifier': model.stage_classifiers[2].norm_in,
        'fused classifier': model.fused_classifier.norm_in,
    }
    before = {k: _batches_tracked(m) for k, m in counted.items()}
    for step in range(model.num_train_steps):
        model(x, target=y, step=step).loss.backward()
    updates = {k: _batches_tracked(m) - before[k] for k, m in counted.items()}
    # By hand, the passes that train: stage step l runs the jigsaw (stem, stage l's conv and classifier once); the
    # fused step runs x and its zoom (stem and every stage conv twice, the fused classifier twice). The box passes
    # (one per step) and the teachers (stage l - 1 in step l, every stage in the fused step) count nothing.
    assert updates == {
        'stem': 3 + 2,
        'stage1 conv': 1 + 2,
        'stage1 classifier': 1,
        'stage3 classifier': 1,
        'fused classifier': 2,
    }


@pytest.mark.parametrize(
    'backbone,widths',
    [('resnet50', (512, 1024, 512)), ('tf_efficientnet_lite0', (80, 160, 80)), ('test_resnet', (24, 48, 24))],
)
def test_stage_head_widths_scale_with_the_backbone_as_pmgs_on_resnet50(backbone, widths):
    # PMG on ResNet-50 (2048 channels): 1x1 conv to 512, 3x3 conv to 1024, classifier hidden 512 = 1/4, 1/2, 1/4.
    model = timm.create_model('iagn', backbone=backbone, num_classes=NUM_CLASSES)
    assert (model.mid_channels, model.feature_channels, model.hidden_features) == widths
    assert model.stage_convs[0][1].conv.out_channels == widths[1]
    assert model.stage_classifiers[0].fc_hidden.out_features == widths[2]
    assert model.backbone.channels[-1] == 4 * widths[0]


def test_frozen_norm_stats_normalise_with_the_batch_and_leave_every_statistic_as_it_was():
    from fgvc_zoo.layers import frozen_norm_stats

    norm = torch.nn.BatchNorm2d(3).train()
    norm.running_mean.fill_(0.5)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    with torch.no_grad(), frozen_norm_stats(norm):
        out = norm(x)
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out, (x - mean.view(1, 3, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1) + norm.eps))
    assert torch.equal(norm.running_mean, torch.full((3,), 0.5)) and torch.equal(norm.running_var, torch.ones(3))
    assert int(norm.num_batches_tracked) == 0 and norm.momentum == 0.1
