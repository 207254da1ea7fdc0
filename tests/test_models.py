"""The model matrix: every registered head over tiny timm backbones keeps the model contract.

In the spirit of timm's own tests/test_models.py: shapes, gradients, batch-size invariance, classifier reset,
safetensors round trip, and the timm API (optimiser grouping, grad checkpointing).
"""

import copy

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2

from fgvc_zoo.models import (
    DEFAULT_BACKBONE,
    Explanation,
    FgvcOutput,
    ModelName,
    head_class,
    head_models,
    head_name,
    list_heads,
    split_model_name,
)

BACKBONES = ['test_resnet', 'test_convnext', 'test_efficientnet', 'test_vit', 'test_nfnet']
# Small head sizes so the matrix runs in seconds on a 2-core CPU; everything else (and any head not listed) is the
# head's default.
TINY_HEAD_ARGS = {
    'lfd': dict(zoom_size=32, region_sizes=(0.35, 0.5)),  # a 64 px image has 2 x 2 cells: 2 sizes give 8 boxes
    'dpnet': dict(freeze_backbone=False),
    'iagn': dict(mid_channels=16, feature_channels=32, hidden_features=16),
}
IMG = 64
NUM_CLASSES = 5


def _create(head: str, backbone: str, **kwargs) -> torch.nn.Module:
    """The head (or a variant of it) over `backbone`, at the tiny sizes."""
    args = dict(TINY_HEAD_ARGS.get(head_name(head), {}), **kwargs)
    return timm.create_model(head, backbone=backbone, num_classes=NUM_CLASSES, **args)


def _train_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    return [model(x, target=y, step=k) for k in range(model.num_train_steps)]


@pytest.mark.parametrize('backbone', BACKBONES)
def test_forward_returns_logits_in_train_and_eval_and_an_output_with_target(head, backbone, batch):
    x, y = batch
    model = _create(head, backbone)
    model.train()
    assert model(x).shape == (3, NUM_CLASSES)
    for out in _train_losses(model, x, y):
        assert isinstance(out, FgvcOutput)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert out.logits.shape == (3, NUM_CLASSES)
        assert out.losses and all(term.ndim == 0 for term in out.losses.values())
    model.eval()
    assert model(x).shape == (3, NUM_CLASSES)
    assert model(x, target=y).shape == (3, NUM_CLASSES), 'eval mode ignores the target and returns logits'


@pytest.mark.parametrize('backbone', BACKBONES)
def test_every_trainable_parameter_receives_a_gradient(head, backbone, batch):
    x, y = batch
    model = _create(head, backbone)
    model.train()
    for out in _train_losses(model, x, y):
        out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f'no gradient reached {missing[:5]}'
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())


@pytest.mark.parametrize('backbone', BACKBONES)
def test_eval_logits_do_not_depend_on_the_batch(head, backbone, batch):
    x, _ = batch
    model = _create(head, backbone).eval()
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)


def test_forward_head_of_forward_features_is_forward(head, batch):
    x, _ = batch
    model = _create(head, 'test_resnet').eval()
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (3, model.head_hidden_size)


def test_reset_classifier_changes_the_number_of_classes(head, batch):
    x, y = batch
    model = _create(head, 'test_resnet')
    model.reset_classifier(9)
    assert model.num_classes == 9
    assert model.get_classifier().out_features == 9
    model.eval()
    assert model(x).shape == (3, 9)
    model.train()
    assert all(out.logits.shape == (3, 9) for out in _train_losses(model, x, torch.tensor([8, 0, 3])))


@pytest.mark.parametrize('backbone', ['test_resnet', 'test_vit'])
def test_safetensors_round_trip_reproduces_the_outputs(head, backbone, batch, tmp_path):
    x, _ = batch
    model = _create(head, backbone).eval()
    save_file(model.state_dict(), str(tmp_path / 'model.safetensors'))
    torch.manual_seed(123)  # a differently initialised copy
    copy = _create(head, backbone).eval()
    copy.load_state_dict(load_file(str(tmp_path / 'model.safetensors')))
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))


def test_a_model_cast_to_bfloat16_runs_on_the_cpu(head, batch):
    # A cast model, not autocast: timm's --model-dtype, bf16 inference.
    x, y = batch
    model = _create(head, 'test_resnet').to(torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(x.bfloat16())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    model.train()
    for out in _train_losses(model, x.bfloat16(), y):
        out.loss.backward()
        assert out.loss.dtype == torch.bfloat16 and torch.isfinite(out.loss)


@pytest.mark.parametrize('backbone', ['test_resnet', 'test_vit'])
def test_explain_gives_maps_and_boxes_in_input_pixels(head, backbone, batch):
    x, _ = batch
    model = _create(head, backbone).eval()
    explanation = model.explain(x)
    assert isinstance(explanation, Explanation)
    assert explanation.heatmaps
    for name, heatmap in explanation.heatmaps.items():
        assert heatmap.ndim == 4 and heatmap.shape[0] == 3 and heatmap.shape[-2:] == (IMG, IMG), name
    boxes = explanation.boxes
    assert boxes.ndim == 3 and boxes.shape[0] == 3 and boxes.shape[-1] == 4
    assert explanation.scores.shape == boxes.shape[:2]
    assert (boxes >= 0).all() and (boxes <= IMG).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    assert explanation.labels.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(explanation.labels, model(x).argmax(dim=1))


def test_timm_optimizer_factory_groups_backbone_and_head_parameters(head):
    model = _create(head, 'test_resnet')
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    grouped = {id(p) for group in optimizer.param_groups for p in group['params']}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    scales = sorted({group['lr_scale'] for group in optimizer.param_groups})
    assert len(scales) > 2, 'layer decay must see the backbone stages through the re-prefixed group_matcher'
    head_names = [n for n, _ in model.named_parameters() if not n.startswith('backbone.')]
    head_ids = {id(p) for n, p in model.named_parameters() if n in head_names}
    head_scales = {g['lr_scale'] for g in optimizer.param_groups if head_ids & {id(p) for p in g['params']}}
    assert head_scales == {1.0}, 'the head is the last group and trains at the full learning rate'


# timm checkpoints these families differently: ResNet by stage, EfficientNet and MobileNetV3 by block (where the
# recomputation stops early inside a BatchNorm), ConvNeXt with no BatchNorm at all.
CHECKPOINTED_BACKBONES = ['test_resnet', 'test_efficientnet', 'mobilenetv3_small_050', 'test_convnext']


@pytest.mark.parametrize('backbone', CHECKPOINTED_BACKBONES)
def test_grad_checkpointing_trains_exactly_as_a_plain_step(head, backbone, batch):
    x, y = batch
    plain = _create(head, backbone).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.backbone.grad_checkpointing
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(0)
        for _ in range(2):  # the second batch runs over whatever state the first left (IAGN's frozen teacher pass)
            for out in _train_losses(model, x, y):
                out.loss.backward()
                losses.append(out.loss)
    torch.testing.assert_close(losses[len(losses) // 2 :], losses[: len(losses) // 2])
    # The recomputation in backward leaves every BatchNorm as a plain step does: statistics, counter and momentum.
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[key], value, msg=key)
    momenta = [(n, getattr(m, 'momentum', None)) for n, m in plain.named_modules()]
    assert [(n, getattr(m, 'momentum', None)) for n, m in checkpointed.named_modules()] == momenta
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_named_variants_are_registered_for_the_popular_backbones(head):
    from fgvc_zoo.models import POPULAR_BACKBONES

    names = timm.list_models(f'{head}*')
    for backbone in POPULAR_BACKBONES:
        assert f'{head}_{backbone}' in names
        entrypoint = timm.models._registry._model_entrypoints[f'{head}_{backbone}']
        assert entrypoint.__doc__ and entrypoint.__name__ == f'{head}_{backbone}'  # written out, timm style
    model = timm.create_model(f'{head}_resnet50', num_classes=11)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 448, 448)
    assert cfg['mean'] == timm.models.get_pretrained_cfg('resnet50.a1_in1k').mean
    assert model.model_args['backbone'].startswith('resnet50')


def test_a_named_variant_refuses_another_backbone_naming_the_generic_head(head):
    fix = rf"create_model\('{head}', backbone='resnet18'\)"
    with pytest.raises(ValueError, match=rf"'{head}_resnet50' is {head} over resnet50, not over 'resnet18'.*{fix}"):
        timm.create_model(f'{head}_resnet50', backbone='resnet18', device='meta')
    # The same backbone with a tag (config.json records the backbone of every export) is that variant.
    model = timm.create_model(f'{head}_resnet50', backbone='resnet50.tv_in1k', device='meta')
    assert model.backbone.name == 'resnet50.tv_in1k'


@pytest.mark.parametrize(
    'name,parts',
    [
        ('lfd', ModelName('lfd', None, '')),
        ('lfd_resnet50', ModelName('lfd', 'resnet50', '')),
        ('dpnet_convnext_tiny.fb_in22k_ft_in1k', ModelName('dpnet', 'convnext_tiny', 'fb_in22k_ft_in1k')),
        ('iagn_resnet50.tv_in1k', ModelName('iagn', 'resnet50', 'tv_in1k')),
        ('lfd_resnet50.cub_200_2011', ModelName('lfd', 'resnet50', 'cub_200_2011')),
        ('iagn_swin_base_patch4_window7_224', ModelName('iagn', 'swin_base_patch4_window7_224', '')),
        ('vit_small_patch16_224.augreg_in1k', ModelName(None, 'vit_small_patch16_224', 'augreg_in1k')),
        ('resnet50', ModelName(None, 'resnet50', '')),
    ],
)
def test_split_model_name_gives_head_backbone_and_tag(name, parts):
    assert split_model_name(name) == parts


def test_split_model_name_recognises_the_heads_it_is_given():
    # A head's cfgs are generated before it registers: it names itself.
    assert split_model_name('newhead_test_vit.tag', heads=('newhead',)) == ModelName('newhead', 'test_vit', 'tag')
    assert split_model_name('newhead_test_vit.tag') == ModelName(None, 'newhead_test_vit', 'tag')


@pytest.mark.parametrize('name', head_models(include_tags=True))
def test_every_registered_name_splits_into_a_head_and_a_timm_backbone(name):
    head, backbone, tag = split_model_name(name)
    assert head in list_heads() and head_name(name) == head
    assert backbone is None or timm.is_model(backbone), name
    assert name == '_'.join(p for p in (head, backbone) if p) + (f'.{tag}' if tag else '')


# The tiny timm backbone of each popular backbone's family: its modules carry the same names (`conv1`, `stem.0`,
# `conv_stem`, `patch_embed.proj`), so a registered cfg can be checked against a model built in seconds.
TINY_OF_FAMILY = {'resnet': 'test_resnet', 'convnext': 'test_convnext', 'efficientnet': 'test_efficientnet'}


def _tiny_backbone(cfg_backbone: str | None) -> str:
    family = next((f for f in TINY_OF_FAMILY if cfg_backbone and f in cfg_backbone), None)
    return TINY_OF_FAMILY[family] if family else 'test_vit'  # vit and swin: patch_embed.proj


def _registered_cfgs():
    """(model name, tag, its registered pretrained cfg) of every head model: timm's own registry, not a list."""
    for name in head_models():
        default_cfg = timm.models._registry._model_default_cfgs[name]
        for tag, cfg in default_cfg.cfgs.items():
            yield pytest.param(name, cfg, id=f'{name}.{tag}' if tag else name)


@pytest.mark.parametrize('name,cfg', list(_registered_cfgs()))
def test_every_registered_cfg_names_layers_of_its_model(name, cfg):
    # timm's test_model_default_cfgs: the classifier layers (dropped when num_classes changes) and the first conv
    # (adapted to in_chans) that a cfg names exist in the model it builds, and the pre-logits have its width.
    # A variant's cfg is its backbone's; a generic name's, its default backbone's (it builds without one). The model
    # is the generic head over the tiny backbone of that family (a variant refuses another backbone).
    head, variant_backbone, _ = split_model_name(name)
    model = _create(head, _tiny_backbone(variant_backbone or DEFAULT_BACKBONE))
    modules = dict(model.named_modules())
    classifiers = (cfg.classifier,) if isinstance(cfg.classifier, str) else cfg.classifier
    assert classifiers and all(c in modules for c in classifiers), (classifiers, name)
    assert isinstance(modules[classifiers[-1]], torch.nn.Linear)
    first_convs = (cfg.first_conv,) if isinstance(cfg.first_conv, str) else cfg.first_conv or ()
    assert all(c in modules for c in first_convs if c), (cfg.first_conv, name)
    assert first_convs and all(c.startswith('backbone.model.') for c in first_convs)
    model.eval()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(torch.randn(2, 3, 64, 64)), pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)
    assert isinstance(model, head_class(name))


def test_no_weight_decay_names_parameters_of_the_model():
    model = _create('lfd', 'test_vit')
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() and model.no_weight_decay() <= names


def test_a_backbone_tag_loads_the_backbones_imagenet_weights_and_a_fresh_head(monkeypatch):
    import fgvc_zoo.models._backbone as backbone_module

    requests, calls = [], []
    create_model = timm.create_model

    def hub_file(name):  # the Hub is offline in tests: record the request; None hands the loading to timm
        requests.append(name)
        return None

    def record(name, pretrained=False, **kwargs):  # record what timm is asked for, build random
        calls.append((name, pretrained))
        return create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbone_module, 'hub_weights_file', hub_file)
    monkeypatch.setattr(backbone_module.timm, 'create_model', record)
    lfd = create_model('lfd_resnet50', pretrained=True, num_classes=7)
    assert requests == ['resnet50.a1_in1k'] and set(calls) == {('resnet50.a1_in1k', True)}
    assert lfd.hybrid_head.out_features == 7


def test_pretrained_with_a_backbone_that_has_no_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="timm's backbone 'test_maxvit' has weights"):
        timm.create_model('lfd', backbone='test_maxvit', pretrained=True, num_classes=3)


# ---------------------------------------------------------------------------------------------- registry honesty


def test_list_pretrained_advertises_only_published_fgvc_weights(head):
    from fgvc_zoo.models import FGVC_DATASETS, PUBLISHED_TAGS

    listed = timm.list_pretrained(f'{head}*')
    assert set(listed) <= PUBLISHED_TAGS
    every_tag = timm.list_models(f'{head}*', include_tags=True)
    unpublished = [n for n in every_tag if n.split('.')[-1] in FGVC_DATASETS and n not in PUBLISHED_TAGS]
    assert unpublished == []


def test_a_published_fgvc_tag_is_registered_with_its_hub_repo_and_keeps_imagenet_the_default():
    from fgvc_zoo.models import generate_head_cfgs, lfd

    cfgs = generate_head_cfgs('lfd', lfd._cfg, published=frozenset({'lfd_resnet50.cub_200_2011'}))
    resnet50 = cfgs['lfd_resnet50']
    assert list(resnet50.tags)[0] == 'a1_in1k'  # pretrained=True on the bare name: ImageNet
    assert sorted(resnet50.tags) == ['a1_in1k', 'cub_200_2011', 'tv_in1k']  # tv_in1k: the papers' ResNet-50
    cub = resnet50.cfgs['cub_200_2011']
    assert cub.hf_hub_id == 'fgvc-zoo/lfd_resnet50.cub_200_2011' and cub.hf_hub_filename == 'model.safetensors'
    assert cub.num_classes == 200
    assert 'stanford_cars' not in resnet50.cfgs and 'fgvc_aircraft' not in resnet50.cfgs


def test_a_published_tag_that_is_no_fgvc_tag_of_the_head_is_refused():
    from fgvc_zoo.models import generate_head_cfgs, lfd

    with pytest.raises(ValueError, match=r"\['lfd_resnet50.cub'\] are not FGVC tags of lfd"):
        generate_head_cfgs('lfd', lfd._cfg, published=frozenset({'lfd_resnet50.cub'}))


def test_fgvc_zoo_list_says_which_weights_each_tag_loads(capsys, monkeypatch):
    import dataclasses

    from timm.models import _registry

    from fgvc_zoo import cli

    assert cli.run(['list', 'lfd*']) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.strip() and ':' not in line.split()[0]}
    assert rows['lfd_resnet50.a1_in1k'] == 'backbone weights timm/resnet50.a1_in1k, head from random init'
    assert rows['lfd'].startswith('any timm backbone')
    assert lines[-1] == 'Fine-grained (FGVC) weights published on the Hub: none yet.'

    # once a release registers a tag with its Hub repo, the list shows it as published weights
    cfg = dataclasses.replace(timm.models.get_pretrained_cfg('lfd_resnet50.a1_in1k'), tag='toy', hf_hub_id='o/r')
    monkeypatch.setitem(_registry._model_pretrained_cfgs, 'lfd_resnet50.toy', cfg)
    monkeypatch.setitem(
        _registry._model_with_tags, 'lfd_resnet50', [*_registry._model_with_tags['lfd_resnet50'], 'lfd_resnet50.toy']
    )
    assert cli.run(['list', 'lfd_resnet50*']) == 0
    assert 'lfd_resnet50.toy      published weights: hf-hub:o/r' in capsys.readouterr().out


def test_the_models_export_the_head_api_and_hub_io_and_conversion_have_one_home_each():
    from fgvc_zoo import convert, hub, models
    from fgvc_zoo.models import hub_io

    exported = set(models.__all__)
    head_api = {'Lfd', 'DpNet', 'Iagn', 'FgvcModel', 'FgvcOutput', 'Explanation', 'PaperInfo', 'register_head'}
    assert head_api | {'build_fgvc_model', 'generate_head_cfgs', 'list_heads', 'split_model_name'} <= exported
    assert all(hasattr(models, name) for name in exported)
    assert not exported & (set(hub_io.__all__) | set(convert.__all__))
    assert all(getattr(hub, name) is getattr(hub_io, name) for name in hub_io.__all__)
    assert set(hub_io.__all__) <= set(hub.__all__)
