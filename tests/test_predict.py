"""`fgvc_zoo.inference.predict` and `fgvc-zoo predict`: top-k names and probabilities, text and JSON."""

import json
import math

import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from fgvc_zoo.cli import run
from fgvc_zoo.hub import save_pretrained
from fgvc_zoo.inference.predict import format_predictions, predict


class FixedLogits(nn.Module):
    """Logits log([1, 2, 5]) for every image: softmax [0.125, 0.25, 0.625]."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 2.0, 5.0]).log(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.zeros(3, 4, 4)


def test_topk_names_and_probabilities_are_the_softmax_best_first():
    images = [Image.new('RGB', (8, 8)), Image.new('RGB', (8, 8))]
    predictions = predict(FixedLogits(), images, to_tensor, ['ant', 'bee', 'cat'], topk=2)
    assert len(predictions) == 2
    assert predictions[0] == [
        {'index': 2, 'label': 'cat', 'probability': pytest.approx(0.625)},
        {'index': 1, 'label': 'bee', 'probability': pytest.approx(0.25)},
    ]
    # without names, the class index is the label; topk is capped at the number of classes
    assert [p['label'] for p in predict(FixedLogits(), images[:1], to_tensor, topk=10)[0]] == ['2', '1', '0']


def test_text_format():
    predictions = [
        [{'index': 2, 'label': 'cat', 'probability': 0.625}, {'index': 1, 'label': 'bee', 'probability': 0.25}]
    ]
    assert format_predictions(['img.png'], predictions) == 'img.png\n  1. cat  62.50%\n  2. bee  25.00%'


def test_predict_refuses_label_names_of_another_length():
    with pytest.raises(ValueError, match='2 label names for a model with 3 classes'):
        predict(FixedLogits(), [Image.new('RGB', (8, 8))], to_tensor, ['ant', 'bee'])


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """An exported 3-class model, three solid-colour images and the model's probabilities for them at 96 px."""
    folder = tmp_path_factory.mktemp('model')
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3).eval()
    save_pretrained(model, folder, label_names=['ant', 'bee', 'cat'])
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    images = []
    for k, colour in enumerate(colours):
        images.append(folder / f'image{k}.png')
        Image.new('RGB', (120, 100), colour).save(images[-1])
    # By hand, not through the package's transform: a solid image stays solid through resize and crop, and with the
    # model's mean = std = 0.5 each channel value c becomes c / 255 / 0.5 - 1 = 2 c / 255 - 1 everywhere.
    assert model.pretrained_cfg['mean'] == model.pretrained_cfg['std'] == (0.5, 0.5, 0.5)
    inputs = torch.stack([(2 * torch.tensor(c) / 255 - 1).view(3, 1, 1).expand(3, 96, 96) for c in colours])
    with torch.no_grad():
        probabilities = model(inputs).softmax(dim=1)
    return folder, [str(p) for p in images], probabilities


def test_predict_cli_json(exported, capsys):
    folder, images, probabilities = exported
    assert (
        run(
            [
                'predict',
                *images,
                '--checkpoint',
                str(folder),
                '--img-size',
                '96',
                '--topk',
                '2',
                '--json',
                '--batch-size',
                '2',
            ]
        )
        == 0
    )
    output = json.loads(capsys.readouterr().out)
    assert [entry['image'] for entry in output] == images
    for entry, row in zip(output, probabilities, strict=True):
        expected = row.argsort(descending=True)[:2].tolist()
        assert [p['index'] for p in entry['predictions']] == expected
        assert [p['label'] for p in entry['predictions']] == [['ant', 'bee', 'cat'][k] for k in expected]
        assert [p['probability'] for p in entry['predictions']] == pytest.approx(row[expected].tolist(), abs=1e-6)


def test_predict_cli_text(exported, capsys):
    folder, images, probabilities = exported
    assert run(['predict', images[0], '--checkpoint', str(folder), '--img-size', '96', '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == images[0] and len(lines) == 4
    percentages = [float(line.split()[-1].rstrip('%')) for line in lines[1:]]
    assert [line.split()[0] for line in lines[1:]] == ['1.', '2.', '3.']
    assert sorted(line.split()[1] for line in lines[1:]) == ['ant', 'bee', 'cat']
    assert percentages == sorted(percentages, reverse=True) and math.isclose(sum(percentages), 100, abs_tol=0.02)
    best_first = probabilities[0].argsort(descending=True).tolist()
    assert [line.split()[1] for line in lines[1:]] == [['ant', 'bee', 'cat'][k] for k in best_first]
    assert percentages == pytest.approx([100 * probabilities[0, k].item() for k in best_first], abs=0.005 + 1e-6)


@pytest.mark.parametrize('as_json', [False, True])
def test_predict_reports_each_bad_file_and_still_predicts_the_good_ones(exported, capsys, tmp_path, as_json):
    folder, images, _ = exported
    empty, missing = tmp_path / 'empty.png', tmp_path / 'missing.png'
    empty.write_bytes(b'')
    paths = [images[0], str(empty), images[1], str(missing)]
    flags = ['--checkpoint', str(folder), '--img-size', '96', '--topk', '1', '--batch-size', '2']
    status = run(['predict', *paths, *flags, *(['--json'] if as_json else [])])
    assert status == 1
    out, err = capsys.readouterr()
    errors = err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith('fgvc-zoo predict: error: ') and str(empty) in errors[0] and 'zero-byte' in errors[0]
    assert str(missing) in errors[1] and 'file not found' in errors[1]
    if as_json:
        entries = json.loads(out)
        assert [e['image'] for e in entries] == paths
        assert [sorted(e) for e in entries] == [['image', 'predictions'], ['error', 'image']] * 2
    else:
        assert [line for line in out.splitlines() if not line.startswith(' ')] == [images[0], images[1]]
