"""LFD as docs/methods.md section 1 specifies it, checked against hand-computed values."""

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from fgvc_zoo.layers import cell_boxes, crop_and_zoom, select_boxes, smooth_maps


def _lfd(**kwargs):
    args = dict(backbone='test_resnet', num_classes=3, zoom_size=32, region_sizes=(0.35, 0.5))
    return timm.create_model('lfd', **dict(args, **kwargs))


def test_attention_map_is_the_elementwise_max_over_all_class_maps():
    model = _lfd(cam_sigma=0.0)
    model.image_head = torch.nn.Linear(2, 3, bias=False)  # n = 2 feature channels, C = 3 classes
    with torch.no_grad():
        model.image_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
    features = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # (1, n=2, 2, 2)
    # M_0 = Z_0 = [[1, 2], [0, -1]];  M_1 = Z_1 = [[3, 0], [1, 1]];  M_2 = Z_0 - Z_1 = [[-2, 2], [-1, -2]]
    expected_max = torch.tensor([[[[3.0, 2.0], [1.0, 1.0]]]])
    torch.testing.assert_close(model.attention_map(features), expected_max)
    # the single-class ablation ('pred'/'target' cam_mode) picks one map
    torch.testing.assert_close(
        model.attention_map(features, torch.tensor([2])), torch.tensor([[[[-2.0, 2.0], [-1.0, -2.0]]]])
    )


def test_gaussian_smoothing_of_a_delta_is_the_normalised_gaussian():
    sigma = 1.0
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 4, 4] = 1.0
    smoothed = smooth_maps(delta, sigma)
    # kernel radius 3 sigma: 1D weights g(d) = exp(-d^2 / 2) / sum_{|d|<=3} exp(-d^2 / 2); the 2D kernel is g x g
    norm = sum(math.exp(-d * d / 2) for d in range(-3, 4))
    for dy, dx in [(0, 0), (1, 0), (1, 2), (3, 3)]:
        expected = math.exp(-dy * dy / 2) * math.exp(-dx * dx / 2) / norm**2
        assert smoothed[0, 0, 4 + dy, 4 + dx].item() == pytest.approx(expected, rel=1e-5)
    assert smooth_maps(delta, 0.0) is delta


def test_candidate_boxes_are_centred_on_cells_and_shifted_inside_the_image():
    boxes = cell_boxes((2, 2), (448, 448), [160 / 448])
    # cell centres at 112 and 336 px; side 160 -> [32, 192] and [256, 416], already inside the image
    expected = torch.tensor([[32, 32, 192, 192], [256, 32, 416, 192], [32, 256, 192, 416], [256, 256, 416, 416]])
    torch.testing.assert_close(boxes, expected.float())
    corner = cell_boxes((14, 14), (448, 448), [160 / 448])[0]  # centre (16, 16) -> shifted to start at 0
    torch.testing.assert_close(corner, torch.tensor([0.0, 0.0, 160.0, 160.0]))


def test_selected_boxes_overlap_at_most_the_nms_threshold():
    boxes = cell_boxes((14, 14), (448, 448), [160 / 448])
    scores = torch.rand(2, 14 * 14)
    selected, selected_scores = select_boxes(boxes, scores, 6, 0.25)
    assert selected.shape == (2, 6, 4)
    for image in range(2):
        iou = box_iou(selected[image], selected[image])
        assert (iou - torch.eye(6)).max() <= 0.25
        assert (selected_scores[image][:-1] >= selected_scores[image][1:]).all(), 'best first'
    assert selected_scores[0, 0] == scores[0].max() and selected_scores[1, 0] == scores[1].max()


def test_when_nms_leaves_too_few_boxes_the_best_suppressed_ones_fill_the_slots():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]).float()
    scores = torch.tensor([[0.9, 0.8, 0.1]])
    selected, selected_scores = select_boxes(boxes, scores, 3, 0.25)
    # NMS keeps boxes 0 and 2 (box 1 overlaps box 0 with IoU 9/11); box 1 fills the last slot
    torch.testing.assert_close(selected[0], boxes[[0, 2, 1]])
    torch.testing.assert_close(selected_scores[0], scores[0, [0, 2, 1]])


def test_each_crop_equals_an_independent_bilinear_crop_and_resize_of_its_box():
    images = torch.rand(2, 3, 40, 40)
    boxes = torch.tensor(
        [[[4.0, 6.0, 20.0, 22.0], [10.0, 12.0, 34.0, 36.0]], [[8.0, 2.0, 24.0, 18.0], [15.0, 15.0, 31.0, 31.0]]]
    )
    size = 24
    crops = crop_and_zoom(images, boxes, size)
    assert crops.shape == (4, 3, size, size)
    for i, (image, box) in enumerate([(b, box) for b in range(2) for box in boxes[b]]):
        x1, y1, x2, y2 = box.tolist()
        # sample point j of the output sits at x1 + (j + 0.5) * (x2 - x1) / size in continuous pixel coordinates
        xs = x1 + (torch.arange(size) + 0.5) * (x2 - x1) / size
        ys = y1 + (torch.arange(size) + 0.5) * (y2 - y1) / size
        grid_y, grid_x = torch.meshgrid(ys * 2 / 40 - 1, xs * 2 / 40 - 1, indexing='ij')
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]
        expected = F.grid_sample(images[image : image + 1], grid, mode='bilinear', align_corners=False)
        torch.testing.assert_close(crops[i : i + 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_crops_are_the_float32_crops_of_the_same_pixels_cast_back(dtype):
    images = torch.rand(2, 3, 40, 40).to(dtype)
    boxes = torch.tensor([[[4.0, 6.0, 20.0, 22.0]], [[8.0, 2.0, 24.0, 18.0]]])
    crops = crop_and_zoom(images, boxes, 8)
    assert crops.dtype == dtype
    assert torch.equal(crops, crop_and_zoom(images.float(), boxes, 8).to(dtype))


def test_explained_boxes_have_the_configured_size_and_lie_inside_the_image():
    model = _lfd(region_sizes=(0.4,)).eval()
    explanation = model.explain(torch.randn(2, 3, 96, 96))
    boxes = explanation.boxes
    assert boxes.shape == (2, model.num_hybrid_regions, 4)
    torch.testing.assert_close(boxes[..., 2] - boxes[..., 0], torch.full((2, 4), 0.4 * 96))
    torch.testing.assert_close(boxes[..., 3] - boxes[..., 1], torch.full((2, 4), 0.4 * 96))
    assert (boxes >= 0).all() and (boxes <= 96).all()


def _grid_sample_crop(image: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) image's `box` resampled to size x size with grid_sample at the cell centres of the box."""
    x1, y1, x2, y2 = box.tolist()
    height, width = image.shape[-2:]
    xs = (x1 + (torch.arange(size) + 0.5) * (x2 - x1) / size) * 2 / width - 1
    ys = (y1 + (torch.arange(size) + 0.5) * (y2 - y1) / size) * 2 / height - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return F.grid_sample(image[None], torch.stack([grid_x, grid_y], dim=-1)[None], align_corners=False)


def test_hybrid_feature_is_the_image_feature_and_l_region_features():
    # 64 px zooms: test_resnet's stride-32 map of each is 2 x 2, so its average pool is no single cell.
    model = _lfd(num_regions=5, num_hybrid_regions=3, zoom_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        hybrid = model.forward_head(tokens, pre_logits=True)
        # timm's own pre-logits (global average pool) of the image and of each of the l explained boxes' zoom
        timm_model = model.backbone.model
        boxes = model.explain(x).boxes
        crops = torch.cat([_grid_sample_crop(x[i], box, 64) for i in range(2) for box in boxes[i]])
        image_feature, region_features = (
            timm_model.forward_head(timm_model.forward_features(images), pre_logits=True) for images in (x, crops)
        )
    assert tokens.shape == (2, 4, model.num_features)
    torch.testing.assert_close(tokens[:, 0], image_feature, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tokens[:, 1:], region_features.view(2, 3, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hybrid, tokens.flatten(1) * model.hybrid_scale)
    assert model.hybrid_head.in_features == 4 * model.num_features == model.head_hidden_size


def test_the_hybrid_feature_is_scaled_to_the_squared_norm_of_one_feature_by_default():
    # l = 3: [F^I, F^R_1..3] has 4 parts; the default factor is 1 / sqrt(4) = 0.5, hybrid_scale=1.0 is the paper's.
    plain = _lfd(num_regions=5, num_hybrid_regions=3, hybrid_scale=1.0).eval()
    scaled = _lfd(num_regions=5, num_hybrid_regions=3).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hybrid = scaled.forward_head(scaled.forward_features(x), pre_logits=True)
        torch.testing.assert_close(hybrid, 0.5 * plain.forward_head(plain.forward_features(x), pre_logits=True))


def test_crops_and_images_keep_separate_batchnorm_running_statistics():
    model = _lfd(num_regions=6, num_hybrid_regions=4).train()
    images_only, crops_only = copy.deepcopy(model.backbone), copy.deepcopy(model.backbone)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    crops = []
    model.backbone.register_forward_hook(lambda m, inputs, out: crops.append(inputs[0]))
    model(x, target=y)
    images_only(x)
    crops_only(crops[1])  # the second backbone call of the step is the one on the B x m crops
    bn = 'model.bn1'
    assert not torch.equal(
        images_only.state_dict()[f'{bn}.running_mean'], crops_only.state_dict()[f'{bn}.running_mean']
    )
    for key, value in model.backbone.state_dict().items():
        if 'running_' in key or 'num_batches_tracked' in key:
            torch.testing.assert_close(value, images_only.state_dict()[key])
            torch.testing.assert_close(getattr(model.crop_stats, key.replace('.', '__')), crops_only.state_dict()[key])
    # Shared statistics (the plain reading of the paper) add nothing to the state dict.
    assert not any('crop_stats' in k for k in _lfd(crop_norm_stats=False).state_dict())


def test_eval_crops_are_normalised_with_the_crop_statistics():
    model = _lfd(num_regions=6, num_hybrid_regions=4).eval()
    crops_backbone = copy.deepcopy(model.backbone)
    for key in model.crop_stats.keys:
        getattr(model.crop_stats, key.replace('.', '__')).add_(0.5 if 'running_mean' in key else 0)
        crops_backbone.state_dict()[key].add_(0.5 if 'running_mean' in key else 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        boxes, _ = model.select_regions(
            model.backbone(x), model.image_head(model.backbone(x).mean((2, 3))), (64, 64), 4
        )
        expected = crops_backbone(crop_and_zoom(x, boxes, model.zoom_size)).mean(dim=(2, 3))
        tokens = model.forward_features(x)
    torch.testing.assert_close(tokens[0, 1:], expected)


def _backbone_batch_sizes(model, x, **kwargs):
    sizes = []
    handle = model.backbone.register_forward_hook(lambda m, inputs, out: sizes.append(inputs[0].shape[0]))
    model(x, **kwargs)
    handle.remove()
    return sizes


def test_training_crops_m_regions_and_inference_only_the_top_l():
    model = _lfd(num_regions=6, num_hybrid_regions=4)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    assert _backbone_batch_sizes(model.train(), x, target=y) == [2, 2 * 6]
    assert _backbone_batch_sizes(model.eval(), x) == [2, 2 * 4]


def test_training_has_image_region_and_hybrid_cross_entropies():
    model = _lfd(loss_weights=(1.0, 2.0, 3.0)).train()
    out = model(torch.randn(2, 3, 64, 64), target=torch.tensor([0, 2]))
    assert set(out.losses) == {'image', 'region', 'hybrid'}
    expected = out.losses['image'] + 2 * out.losses['region'] + 3 * out.losses['hybrid']
    torch.testing.assert_close(out.loss, expected)


def test_cam_baseline_predicts_with_the_image_classifier_and_crops_nothing():
    model = _lfd(cam_baseline=True)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    out = model.train()(x, target=y)
    assert set(out.losses) == {'image'}
    assert _backbone_batch_sizes(model.eval(), x) == [2]
    with torch.no_grad():
        expected = model.image_head(model.backbone(x).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected)
    assert model.get_classifier() is model.image_head
    # The region and hybrid classifiers take no part: none of their parameters waits for a gradient (DDP).
    assert not any(p.requires_grad for p in [*model.region_head.parameters(), *model.hybrid_head.parameters()])
    assert model.crop_stats is None


def test_image_level_ablation_trains_crops_with_the_region_loss_and_predicts_with_the_image_classifier():
    # The paper's "image level only" (86.7 on CUB): no hybrid classifier; regions still cropped and trained.
    model = _lfd(hybrid=False, num_regions=6, loss_weights=(1.0, 2.0, 3.0))
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    assert _backbone_batch_sizes(model.train(), x, target=y) == [2, 2 * 6]
    out = model(x, target=y)
    assert set(out.losses) == {'image', 'region'}
    torch.testing.assert_close(out.loss, out.losses['image'] + 2 * out.losses['region'])
    out.loss.backward()
    assert model.region_head.weight.grad is not None
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.crop_stats is not None
    model.eval()
    assert _backbone_batch_sizes(model, x) == [2]  # the image classifier needs no crop at inference
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.image_head(model.backbone(x).mean(dim=(2, 3))))
    assert model.get_classifier() is model.image_head


def test_zoom_size_follows_the_input_as_224_of_448():
    model = _lfd(zoom_size=None).eval()
    sizes = []
    handle = model.backbone.register_forward_hook(lambda m, inputs, out: sizes.append(inputs[0].shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
        model(torch.randn(1, 3, 96, 96))
    handle.remove()
    assert sizes == [128, 64, 96, 48]
    assert model.backbone_passes(2, 448, train=False)[0][1].img_size == 224
    assert _lfd(zoom_size=40).crop_size(128) == 40


def test_attention_map_is_float32_under_autocast():
    model = _lfd(cam_sigma=1.0)
    features = torch.randn(2, model.num_features, 4, 4).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        attention = model.attention_map(features)
    assert attention.dtype == torch.float32
    # By hand in float64 from the same (bf16-valued) features: the max over classes of W Z, then the smoothing.
    maps = torch.einsum('bnhw,cn->bchw', features.double(), model.image_head.weight.double())
    expected = smooth_maps(maps.amax(dim=1, keepdim=True), 1.0)
    torch.testing.assert_close(attention.double(), expected, atol=1e-5, rtol=1e-5)


def _bn_counts(modules):
    return [int(m.num_batches_tracked) for m in modules if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize('checkpointing', [False, True])
def test_each_train_step_updates_image_and_crop_statistics_once_with_or_without_grad_checkpointing(checkpointing):
    model = _lfd().train()
    model.set_grad_checkpointing(checkpointing)
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = _bn_counts(bns)
    crop_means = {k: getattr(model.crop_stats, k.replace('.', '__')).clone() for k in model.crop_stats.keys}
    image_means = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 64, 64), target=torch.tensor([0, 1])).loss.backward()
    # The image pass and the crop pass each count one batch, in their own statistics; backward's recompute none.
    assert _bn_counts(bns) == [c + 1 for c in before]
    counters = [k.replace('.', '__') for k in model.crop_stats.keys if 'batches' in k]
    crop_counts = [int(getattr(model.crop_stats, k)) for k in counters]
    assert crop_counts == [c + 1 for c in before]
    assert all(not torch.equal(m.running_mean, old) for m, old in zip(bns, image_means, strict=True))
    assert any(not torch.equal(getattr(model.crop_stats, k.replace('.', '__')), v) for k, v in crop_means.items())


def test_grad_checkpointing_updates_the_same_statistics_as_a_plain_step():
    torch.manual_seed(0)
    plain = _lfd().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    for model in (plain, checkpointed):
        model(x, target=y).loss.backward()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[key], value, msg=key)


def test_cam_mode_target_selects_regions_from_the_target_class_map():
    model = _lfd(cam_mode='target', cam_sigma=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([2, 0])
    with torch.no_grad():
        features = model.backbone(x)
        logits = model.image_head(features.mean(dim=(2, 3)))
        boxes, scores = model.select_regions(features, logits, (64, 64), 4, target)
        class_maps = torch.einsum('bnhw,cn->bchw', features, model.image_head.weight)
    # the best score of each image is the max of its target class's map, not of the max over classes
    torch.testing.assert_close(scores[:, 0], class_maps[torch.arange(2), target].flatten(1).amax(dim=1))
    max_mode = _lfd(cam_mode='max', cam_sigma=0.0)
    max_mode.load_state_dict(model.state_dict())
    with torch.no_grad():
        _, max_scores = max_mode.select_regions(features, logits, (64, 64), 4, target)
    torch.testing.assert_close(max_scores[:, 0], class_maps.amax(dim=1).flatten(1).amax(dim=1))


def test_cam_mode_pred_uses_the_image_level_prediction():
    model = _lfd(cam_mode='pred', cam_sigma=0.0).eval()
    features = torch.randn(1, model.num_features, 2, 2)
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    _, scores = model.select_regions(features, logits, (64, 64), 4)
    class_map = torch.einsum('bnhw,n->bhw', features, model.image_head.weight[1])
    assert scores[0, 0] == pytest.approx(class_map.max().item(), rel=1e-5)


def test_too_small_an_input_is_a_clear_error():
    model = _lfd(region_sizes=(0.35,), num_regions=6).train()
    with pytest.raises(ValueError, match='Use a larger input'):
        model(torch.randn(1, 3, 64, 64), target=torch.tensor([0]))


def test_unknown_cam_mode_is_rejected():
    with pytest.raises(ValueError, match='cam_mode'):
        _lfd(cam_mode='mean')


def test_lfd_resnet50_maps_a_448_image_to_200_logits():
    model = timm.create_model('lfd_resnet50', num_classes=200).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 448, 448)).shape == (1, 200)


def test_lfd_over_test_vit_trains_and_explains():
    model = timm.create_model('lfd', backbone='test_vit', num_classes=7, zoom_size=32)
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([3, 6])
    model.train()(x, target=y).loss.backward()
    explanation = model.eval().explain(x)
    assert explanation.heatmaps['attention'].shape == (2, 1, 96, 96)
    assert explanation.boxes.shape == (2, 4, 4)
