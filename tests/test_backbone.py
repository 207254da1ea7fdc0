"""The backbone adapter: any timm model -> NCHW maps with channels and strides from feature_info."""

import pytest
import timm
import torch

from fgvc_zoo.models import Backbone


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


# Backbones whose classifier average-pools (ViT built with global_pool='avg', as timm's token pool is not an average).
AVG_POOLED = [
    ('test_resnet', {}),
    ('test_convnext', {}),
    ('test_efficientnet', {}),
    ('test_vit', {'global_pool': 'avg'}),
    ('test_nfnet', {}),
    ('tf_efficientnet_lite0', {}),
]


@pytest.mark.parametrize('name,kwargs', AVG_POOLED, ids=[n for n, _ in AVG_POOLED])
def test_the_final_map_pools_to_the_features_timms_own_classifier_sees(name, kwargs):
    torch.manual_seed(0)
    backbone = Backbone(name, **kwargs).eval()
    reference = timm.create_model(name, num_classes=0, **kwargs).eval()
    reference.load_state_dict(backbone.model.state_dict())
    # Non-trivial norm affine parameters, so that a norm left out or applied twice shows.
    for module in reference.modules():
        if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    backbone.model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final = backbone(x)
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert final.ndim == 4 and final.shape[:2] == (2, reference.num_features) == (2, backbone.num_features)
    assert final.shape[-1] == 64 // backbone.stride
    torch.testing.assert_close(final.mean(dim=(2, 3)), expected, atol=1e-5, rtol=1e-5)


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
