"""The backbone adapter: any timm model -> NCHW maps with channels and strides from feature_info."""

import pytest
import timm
import torch

from fgvc_zoo.models import Backbone
from fgvc_zoo.models._backbone import create_backbone_model


@pytest.mark.parametrize('name', ['test_resnet', 'test_convnext', 'test_efficientnet', 'test_vit', 'test_nfnet'])
def test_maps_match_the_channels_and_strides_of_feature_info(name):
    backbone = Backbone(name, num_stages=2)
    reference = timm.create_model(name, num_classes=0).feature_info[-2:]
    assert backbone.channels == [f['num_chs'] for f in reference]
    assert backbone.strides == [f['reduction'] for f in reference]
    maps = backbone(torch.randn(2, 3, 64, 64))
    assert len(maps) == 2
    for feature_map, channels, stride in zip(maps, backbone.channels, backbone.strides, strict=False):
        assert feature_map.shape == (2, channels, 64 // stride, 64 // stride)
    assert backbone.num_features == backbone.channels[-1]


# Every kind of pool timm's classifiers use, at the models' default kwargs: tiny test models, then one full-size
# config per family the named variants (and the FGVC users' first tries: DINOv2, CLIP, EVA, SigLIP) use.
AVERAGE_POOLED = [
    'test_resnet',
    'test_convnext',
    'test_efficientnet',
    'test_efficientnet_ln',
    'test_vit2',
    'test_vit4',
    'test_vit_relpos',
    'test_nfnet',
    'test_byobnet',
    'test_maxvit',
    'resnet50',
    'convnext_tiny',
    'tf_efficientnet_lite0',
    'eva02_tiny_patch14_224',
    'swin_tiny_patch4_window7_224',
]
# Pools that read tokens or attend over the map (and post-pool layers that cannot act per position): the adapter
# gives the map the pool reads and removes what comes after it.
MAP_READ = {
    'test_vit': ('token', []),
    'test_vit3': ('map', ['attn_pool']),
    'test_mambaout': ('avg', ['head']),
    'mobilenetv3_small_050': ('avg', ['conv_head']),
    'vit_base_patch16_224': ('token', []),
    'vit_small_patch14_dinov2': ('token', []),
    'vit_base_patch16_clip_224': ('token', []),
    'vit_base_patch16_siglip_224': ('map', ['attn_pool']),
    'resnet50_clip': ('attention', ['head']),
}
REFUSED = [
    ('test_resnet', 'max'),
    ('test_resnet', 'catavgmax'),
    ('test_convnext', 'avgmax'),
    ('test_vit', 'avgmax'),
    ('test_vit', 'max'),
]


def _size(name: str) -> int:
    """64 px (56 for a patch of 14), or the input size of a model whose windows or relative positions fix it."""
    fixed = name.startswith(('swin', 'test_vit_relpos', 'test_maxvit'))
    return timm.get_pretrained_cfg(name).input_size[-1] if fixed else 56 if 'patch14' in name else 64


def _with_random_norms(model: torch.nn.Module) -> torch.nn.Module:
    # Non-trivial norm affine parameters, so that a norm left out or applied twice shows.
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize('name', AVERAGE_POOLED)
def test_adapter_average_pool_map_pools_to_timms_pre_logits(name):
    backbone = Backbone(name).eval()
    assert backbone.pool in ('avg', 'fast') and backbone.removed == []
    reference = _with_random_norms(create_backbone_model(name)).eval()
    backbone.model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, _size(name), _size(name))
    with torch.no_grad():
        final = backbone(x)
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert final.ndim == 4 and final.shape[:2] == (2, reference.num_features) == (2, backbone.num_features)
    assert final.shape[-1] == _size(name) // backbone.stride
    torch.testing.assert_close(final.mean(dim=(2, 3)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', list(MAP_READ))
def test_adapter_token_and_attention_pool_give_the_map_the_pool_reads(name):
    pool, removed = MAP_READ[name]
    backbone = Backbone(name).eval()
    assert (backbone.pool, backbone.removed) == (pool, removed)
    reference = _with_random_norms(create_backbone_model(name)).eval()
    backbone.model.load_state_dict(reference.state_dict(), strict=False)  # the removed layers' keys are unused
    x = torch.randn(2, 3, _size(name), _size(name))
    with torch.no_grad():
        final = backbone(x)
        tokens = reference.forward_features(x)  # after the final norm, before the pool
    if getattr(reference, 'output_fmt', 'NCHW') == 'NHWC':
        tokens = tokens.permute(0, 3, 1, 2)
    if tokens.ndim == 3:  # (B, prefix + h * w, C): the patch tokens on their grid
        grid = final.shape[-2:]
        tokens = tokens[:, -grid[0] * grid[1] :].transpose(1, 2).reshape(2, -1, *grid)
    assert backbone.num_features == final.shape[1]
    torch.testing.assert_close(final, tokens, atol=1e-5, rtol=1e-5)
    # The removed layers are gone, so none of their parameters can wait for a gradient.
    assert not any(n.startswith(tuple(f'{r}.' for r in removed)) for n, _ in backbone.model.named_parameters())


def test_adapter_keeps_the_registered_weights_loadable():
    # The removal comes after loading: a state dict of the full timm model (as on the Hub) loads into the adapter.
    reference = timm.create_model('test_vit3', num_classes=0)
    backbone = Backbone('test_vit3')
    missing, unexpected = backbone.model.load_state_dict(reference.state_dict(), strict=False)
    assert missing == [] and all(k.startswith('attn_pool.') for k in unexpected)


@pytest.mark.parametrize('name,pool', REFUSED)
def test_adapter_refuses_a_pool_it_cannot_reproduce_in_one_line(name, pool):
    message = rf"'{name}' pools its features with global_pool='{pool}'.*'global_pool': 'avg'"
    with pytest.raises(ValueError, match=message):
        Backbone(name, global_pool=pool)


@pytest.mark.parametrize('name', ['test_vit', 'test_vit3', 'test_mambaout', 'mobilenetv3_small_050'])
def test_adapter_and_pool_leave_no_parameter_without_gradient_after_a_train_step(head, name):
    args = {
        'lfd': dict(zoom_size=32, region_sizes=(0.35, 0.5)),
        'dpnet': dict(freeze_backbone=False),
        'iagn': dict(mid_channels=16, feature_channels=32, hidden_features=16),
    }[head]
    model = timm.create_model(head, backbone=name, num_classes=5, **args).train()
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 2, 4])
    for step in range(model.num_train_steps):
        model(x, target=y, step=step).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert dead == []


def test_a_vit_takes_any_image_size_with_the_same_weights():
    backbone = Backbone('test_vit')
    assert backbone(torch.randn(1, 3, 96, 96)).shape[-2:] == (6, 6)
    assert backbone(torch.randn(1, 3, 48, 48)).shape[-2:] == (3, 3)


def test_a_swin_takes_the_fgvc_size_and_its_crops():
    backbone = Backbone('swin_tiny_patch4_window7_224')
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 448, 448)).shape == (1, 768, 14, 14)
        assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 768, 7, 7)


def test_an_unknown_backbone_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'.*resnet50"):
        Backbone('resnet5')
    with pytest.raises(ValueError, match='Close matches: .*convnext_tiny'):
        timm.create_model('lfd', backbone='convnext_tiyn', num_classes=3)


def test_too_many_stages_is_a_clear_error():
    with pytest.raises(ValueError, match='num_stages=9 is out of range'):
        Backbone('test_resnet', num_stages=9)


@pytest.mark.parametrize('name', ['test_convnext', 'test_efficientnet'])
def test_a_stage_reader_drops_the_layers_after_the_last_stage_and_a_final_map_reader_keeps_them(name):
    after_last_stage = ('head.', 'conv_head.', 'bn2.')
    stages = Backbone(name, num_stages=2)
    assert not any(n.startswith(after_last_stage) for n, _ in stages.model.named_parameters())
    final = Backbone(name)
    assert any(n.startswith(after_last_stage) for n, _ in final.model.named_parameters())


@pytest.mark.parametrize('name', ['test_resnet', 'test_vit'])
def test_asking_for_fewer_stages_returns_the_same_shallow_maps(name):
    backbone = Backbone(name, num_stages=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every_stage, first_two = backbone(x), backbone(x, num_stages=2)
    assert len(first_two) == 2
    for full, early in zip(every_stage[:2], first_two, strict=False):
        torch.testing.assert_close(early, full)
