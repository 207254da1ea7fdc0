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


def test_a_vit_takes_any_image_size_with_the_same_weights():
    backbone = Backbone('test_vit')
    assert backbone(torch.randn(1, 3, 96, 96))[-1].shape[-2:] == (6, 6)
    assert backbone(torch.randn(1, 3, 48, 48))[-1].shape[-2:] == (3, 3)


def test_a_swin_takes_the_fgvc_size_and_its_crops():
    backbone = Backbone('swin_tiny_patch4_window7_224')
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 448, 448))[-1].shape == (1, 768, 14, 14)
        assert backbone(torch.randn(1, 3, 224, 224))[-1].shape == (1, 768, 7, 7)


def test_an_unknown_backbone_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'.*resnet50"):
        Backbone('resnet5')
    with pytest.raises(ValueError, match='Close matches: .*convnext_tiny'):
        timm.create_model('lfd', backbone='convnext_tiyn', num_classes=3)


def test_too_many_stages_is_a_clear_error():
    with pytest.raises(ValueError, match='num_stages=9 is out of range'):
        Backbone('test_resnet', num_stages=9)


def test_unused_backbone_layers_are_pruned():
    backbone = Backbone('test_convnext')
    assert not any(n.startswith('head.') for n, _ in backbone.model.named_parameters())


@pytest.mark.parametrize('name', ['test_resnet', 'test_vit'])
def test_asking_for_fewer_stages_returns_the_same_shallow_maps(name):
    backbone = Backbone(name, num_stages=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every_stage, first_two = backbone(x), backbone(x, num_stages=2)
    assert len(first_two) == 2
    for full, early in zip(every_stage[:2], first_two, strict=False):
        torch.testing.assert_close(early, full)
