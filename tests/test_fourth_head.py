"""The proof that a head is one file: a minimal fourth head, written here and nowhere in `fgvc_zoo/`, registers
itself and runs through every public entry point: train (`python -m fgvc_zoo.train`'s main, in-process), the
export and its card, `load_model`, eval, predict, explain (a PNG) and the bench.

The head is registered for this module's tests only (a fixture), so that the registry-wide tests of the other
files never see it.
"""

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from test_train import make_tiny_folder

import fgvc_zoo
from fgvc_zoo import cli, hub
from fgvc_zoo import train as train_module
from fgvc_zoo.inference.explain import explain_images
from fgvc_zoo.layers import class_activation_maps, upsample_maps
from fgvc_zoo.models import (
    Explanation,
    FgvcModel,
    FgvcOutput,
    PaperInfo,
    build_fgvc_model,
    fgvc_cfg,
    generate_head_cfgs,
    list_heads,
    register_head,
)
from fgvc_zoo.models._registry import _HEAD_MODULES, _HEADS  # the registry's own tables: the test unregisters its head

HEAD = 'toyhead'


class ToyHead(FgvcModel):
    """Global average pooling and a linear classifier: the least a head can be."""

    paper = PaperInfo(
        title='ToyHead (a test of the head contract)',
        description='Global average pooling of the backbone map and one linear classifier.',
        bibtex='@misc{toyhead, title = {ToyHead}}',
        results={'cub_200_2011': [('ToyHead, ResNet-50', 50.0)]},
    )
    explanation_legend = 'ToyHead draws the **class map** of its linear classifier and a box around the image.'

    def __init__(
        self,
        backbone: str = 'resnet50',
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        pretrained_backbone: bool = False,
        backbone_args: dict | None = None,
    ):
        super().__init__()
        self._init_backbone(backbone, pretrained_backbone, in_chans, backbone_args, drop_rate)
        self.num_features = self.head_hidden_size = self.backbone.num_features
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward_train(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> FgvcOutput:
        logits = self.forward_head(self.forward_features(x))
        loss = F.cross_entropy(logits, target)
        return FgvcOutput(loss=loss, logits=logits, losses={'ce': loss})

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> Explanation:
        features = self.backbone(x)
        logits = self.fc(features.mean(dim=(2, 3)))
        labels = logits.argmax(dim=1)
        maps = upsample_maps(class_activation_maps(features, self.fc.weight), x.shape[-2:])
        height, width = x.shape[-2:]
        boxes = torch.tensor([[0.0, 0.0, width, height]]).expand(x.shape[0], 1, 4)
        return Explanation(
            heatmaps={'class': maps},
            boxes=boxes,
            scores=logits.softmax(dim=1).amax(dim=1, keepdim=True),
            labels=labels,
            logits=logits,
        )


def _cfg(backbone: str | None = None, **kwargs) -> dict:
    return fgvc_cfg(backbone, classifier=('fc',), **kwargs)


default_cfgs = generate_head_cfgs(HEAD, _cfg)  # timm's register_model reads the module's default_cfgs


def toyhead(pretrained: bool = False, **kwargs) -> ToyHead:
    """ToyHead over any timm backbone."""
    return build_fgvc_model(ToyHead, HEAD, pretrained=pretrained, **kwargs)


@pytest.fixture(scope='module')
def registered():
    register_head(ToyHead)(toyhead)
    yield HEAD
    from timm.models import _registry

    _registry._clear_model_entries(HEAD)
    _registry._model_entrypoints.pop(HEAD, None)
    _HEADS.pop(HEAD, None)
    _HEAD_MODULES.pop(HEAD, None)


@pytest.fixture(scope='module')
def trained(registered, tmp_path_factory):
    """The fourth head trained for one epoch by the trainer's own entry point (what `python -m fgvc_zoo.train`
    runs), on a tiny two-class folder."""
    root = tmp_path_factory.mktemp('fourth_head')
    data = make_tiny_folder(root / 'data')
    output = root / 'run'
    argv = ['--model', HEAD, '--backbone', 'test_resnet', '--data-dir', str(data), '--output', str(output)]
    argv += ['--img-size', '64', '--epochs', '1', '--batch-size', '4', '--workers', '0', '--seed', '7']
    assert train_module.main(argv) == 0
    return data, output


def test_the_fourth_head_is_registered_like_the_others(registered):
    assert HEAD in list_heads() and HEAD in timm.list_models(f'{HEAD}*')
    assert isinstance(timm.create_model(HEAD, backbone='test_resnet', num_classes=3), ToyHead)


def test_train_exports_a_card_from_the_heads_own_paper(trained):
    _, output = trained
    config = json.loads((output / 'config.json').read_text())
    assert config['architecture'] == HEAD and config['num_classes'] == 2
    card = (output / 'README.md').read_text()
    assert ToyHead.paper.title in card and ToyHead.paper.bibtex in card
    assert cli.run(['export', str(output)]) == 0  # the card re-written from the export alone


def test_load_model_eval_and_predict(trained, capsys, tmp_path):
    data, output = trained
    model = hub.load_model(str(output))
    assert isinstance(model, ToyHead) and not model.training
    results = tmp_path / 'eval_results.json'
    argv = ['eval', '--checkpoint', str(output), '--data-dir', str(data), '--workers', '0', '--out', str(results)]
    assert cli.run(argv) == 0
    assert json.loads(results.read_text())['num_classes'] == 2
    image = sorted((data / 'val').rglob('*.png'))[0]
    capsys.readouterr()
    assert cli.run(['predict', str(image), '--checkpoint', str(output), '--json']) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert {p['label'] for p in entry['predictions']} == {'blue_circle', 'red_square'}  # the folder's classes
    assert hub.model_label_names(model) == ['blue_circle', 'red_square']


def test_explain_draws_the_default_panels_of_the_fourth_head(trained, tmp_path):
    data, output = trained
    image = sorted((data / 'val').rglob('*.png'))[0]
    png = tmp_path / 'toy_explain.png'
    assert cli.run(['explain', str(image), '--checkpoint', str(output), '--out', str(png)]) == 0
    model = hub.load_model(str(output))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with Image.open(image) as photo:
        (explained,) = explain_images(model, [photo.convert('RGB')], transform, hub.model_label_names(model))
    # FgvcModel's default panels: the boxes, then the class map of the predicted class; no chart
    assert [p.title for p in explained.panels] == [f'boxes -> {explained.label}', 'class map']
    assert explained.chart is None and explained.legend == ToyHead.explanation_legend
    with Image.open(png) as drawn:
        assert drawn.size == explained.png_size


def test_the_bench_times_the_fourth_head_against_its_default_backbone_pass(registered, tmp_path):
    out = tmp_path / 'bench.json'
    argv = ['bench', '--heads', HEAD, '--backbone', 'test_resnet', '--img-size', '64', '--batch-size', '2']
    assert cli.run([*argv, '--reps', '1', '--warmup', '0', '--no-memory', '--json', str(out)]) == 0
    (row,) = json.loads(out.read_text())['timing']
    assert row['head'] == HEAD and row['infer_flop_ratio'] >= 1.0


def test_nothing_in_the_package_names_the_fourth_head():
    package = Path(fgvc_zoo.__file__).parent
    assert not [p for p in package.rglob('*.py') if HEAD in p.read_text() or 'ToyHead' in p.read_text()]
