"""`fgvc_zoo.inference.evaluate`: exact counts, batch-size invariance, forced eval mode, TTA recorded,
`fgvc-zoo eval`."""

import json

import pytest
import timm
import torch
import torch.nn as nn

from fgvc_zoo.cli import run
from fgvc_zoo.data import MissingSplitError, make_synthetic_fgvc, synthetic_class_names
from fgvc_zoo.hub import model_card, save_pretrained
from fgvc_zoo.inference.evaluate import confusion_summary, evaluate

NAMES = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5']
# Sample i is an image filled with the value i; LookupModel returns LOGITS[i] for it.
LABELS = [0, 0, 0, 1, 1, 2]
LOGITS = [
    [5, 0, 0, 0, 0, 0],  # label 0, predicted 0
    [5, 1, 0, 0, 0, 0],  # label 0, predicted 0
    [4, 5, 0, 0, 0, 0],  # label 0, predicted 1, true class 2nd: top-5 hit
    [0, 5, 0, 0, 0, 0],  # label 1, predicted 1
    [5, 0, 4, 3, 2, 1],  # label 1, predicted 0, true class ranked 6th: top-5 miss
    [0, 0, 5, 0, 0, 0],  # label 2, predicted 2
]


class LookupModel(nn.Module):
    num_classes = len(NAMES)

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(LOGITS, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels, classes):
        self.images, self.labels, self.classes = images, list(labels), list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def lookup_dataset() -> TensorDataset:
    images = torch.arange(len(LABELS), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    return TensorDataset(images, LABELS, NAMES)


def test_metrics_are_the_hand_computed_counts():
    results = evaluate(LookupModel(), lookup_dataset(), batch_size=4)
    assert results['metrics']['top1'] == pytest.approx(100 * 4 / 6)
    assert results['metrics']['top5'] == pytest.approx(100 * 5 / 6)
    # per class: c0 2/3, c1 1/2, c2 1/1; c3..c5 have no image and are left out of the mean
    assert results['metrics']['mean_class_accuracy'] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)
    assert results['per_class_accuracy'] == pytest.approx({'c0': 100 * 2 / 3, 'c1': 50.0, 'c2': 100.0})
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 0], expected[2, 2] = 2, 1, 1, 1, 1
    assert results['confusion'] == expected.tolist()
    assert results['most_confused'] == [
        {'true': 'c0', 'predicted': 'c1', 'count': 1},
        {'true': 'c1', 'predicted': 'c0', 'count': 1},
    ]
    assert results['num_images'] == 6 and results['topk'] == 5 and results['tta'] is None


def test_most_confused_pairs_are_sorted_and_skip_the_diagonal():
    confusion = torch.tensor([[9, 1, 3], [0, 8, 0], [5, 2, 7]])
    assert confusion_summary(confusion, ['a', 'b', 'c'], num=3) == [
        {'true': 'c', 'predicted': 'a', 'count': 5},
        {'true': 'a', 'predicted': 'c', 'count': 3},
        {'true': 'c', 'predicted': 'b', 'count': 2},
    ]


class HalvesModel(nn.Module):
    """Logits [L, R, 0.75 (L + R)] of the mean of the image's left half L and right half R."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x[..., :2].mean(dim=(1, 2, 3)), x[..., 2:].mean(dim=(1, 2, 3))
        return torch.stack([left, right, 0.75 * (left + right)], dim=1)


def test_flip_tta_averages_the_probabilities_of_image_and_mirror():
    # Left half 2, right half 0: logits [2, 0, 1.5] -> class 0; mirrored [0, 2, 1.5] -> class 1.
    # softmax([2, 0, 1.5]) = [0.574, 0.078, 0.348]; the mean with the mirror's is [0.326, 0.326, 0.348] -> class 2.
    image = torch.zeros(1, 3, 4, 4)
    image[..., :2] = 2
    dataset = TensorDataset(image, [2], ['a', 'b', 'c'])
    assert evaluate(HalvesModel(), dataset)['metrics']['top1'] == 0
    with_tta = evaluate(HalvesModel(), dataset, tta='flip')
    assert with_tta['metrics']['top1'] == 100 and with_tta['tta'] == 'flip'
    with pytest.raises(ValueError, match='rotate'):
        evaluate(HalvesModel(), dataset, tta='rotate')


# Every head with dropout and trainable BatchNorm, at the smallest input it takes (LFD needs 6 candidate regions).
HEADS = {
    'dpnet': (dict(freeze_backbone=False, drop_rate=0.5), 64),
    'lfd': (dict(drop_rate=0.5, zoom_size=32), 96),
    'iagn': (dict(drop_rate=0.5, mid_channels=16, feature_channels=32, hidden_features=16), 64),
}


@pytest.fixture(scope='module', params=list(HEADS))
def head_and_data(request):
    torch.manual_seed(0)
    model_args, size = HEADS[request.param]
    model = timm.create_model(request.param, backbone='test_resnet', num_classes=3, **model_args)
    images = torch.randn(20, 3, size, size)
    return model, TensorDataset(images, torch.randint(0, 3, (20,)).tolist(), ['a', 'b', 'c'])


def test_batch_size_does_not_change_the_results(head_and_data):
    model, dataset = head_and_data
    one, thirty_two = evaluate(model, dataset, batch_size=1), evaluate(model, dataset, batch_size=32)
    assert one['confusion'] == thirty_two['confusion']
    assert one['metrics'] == thirty_two['metrics']


def test_eval_mode_is_forced_and_the_mode_restored(head_and_data):
    model, dataset = head_and_data
    x = dataset.images[:8]
    torch.manual_seed(1)
    train_logits = model.train()(x)
    eval_logits = model.eval()(x)
    # the test means something only if dropout and BatchNorm make train mode differ
    assert not torch.allclose(train_logits, eval_logits)
    expected = evaluate(model.eval(), dataset, batch_size=8)
    got = evaluate(model.train(), dataset, batch_size=8)
    assert got['confusion'] == expected['confusion']
    assert model.training


def test_eval_cli_writes_results_the_model_card_consumes(tmp_path, capsys):
    data = make_synthetic_fgvc(str(tmp_path / 'data'), num_classes=2, train_per_class=1, val_per_class=3, image_size=64)
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=2)
    folder = save_pretrained(
        model, tmp_path / 'model', label_names=synthetic_class_names(2), data_config=dict(input_size=(3, 64, 64))
    )
    out = tmp_path / 'eval' / 'results.json'
    # no --img-size: the export's recorded input size (64), not the cfg's 448
    assert (
        run(
            [
                'eval',
                '--checkpoint',
                str(folder),
                '--data-dir',
                data,
                '--batch-size',
                '4',
                '--workers',
                '0',
                '--out',
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert set(results['metrics']) == {'top1', 'top5', 'mean_class_accuracy'}
    assert f'top5 {results["metrics"]["top5"]:.2f}' in capsys.readouterr().out  # 2 classes: still top5, as saved
    assert results['num_images'] == 6 and results['tta'] is None and results['dataset']['split'] == 'val'
    assert results['data_config']['input_size'] == [3, 64, 64]
    assert (tmp_path / 'eval' / 'results_confusion.png').stat().st_size > 0
    card = model_card(json.loads((folder / 'config.json').read_text()), results=results)
    assert f'| top1 | {results["metrics"]["top1"]:.2f} |' in card and '| top5 | 100.00 |' in card
    assert 'datasets:\n- data\n' in card  # the dataset folder's name


def test_eval_reads_the_split_it_is_named_and_the_card_says_which(tmp_path):
    data = make_synthetic_fgvc(
        str(tmp_path / 'data'), num_classes=2, train_per_class=1, val_per_class=2, image_size=64, held_out_split='test'
    )
    folder = save_pretrained(
        timm.create_model('dpnet', backbone='test_resnet', num_classes=2),
        tmp_path / 'model',
        label_names=synthetic_class_names(2),
        data_config=dict(input_size=(3, 64, 64)),
    )
    argv = ['eval', '--checkpoint', str(folder), '--data-dir', data, '--workers', '0']
    out = tmp_path / 'results.json'
    assert run([*argv, '--out', str(out)]) == 0  # no val/: the default is the test split
    results = json.loads(out.read_text())
    assert results['dataset']['split'] == 'test' and results['num_images'] == 4
    card = model_card(json.loads((folder / 'config.json').read_text()), results=results)
    assert 'on the test split of `results.json`' in card and '      split: test\n' in card  # model-index
    with pytest.raises(MissingSplitError, match=r"no val/ or validation/ for the 'val' split"):
        run([*argv, '--split', 'val', '--out', str(out)])


def test_eval_refuses_a_model_trained_on_other_classes(tmp_path):
    data = make_synthetic_fgvc(str(tmp_path / 'data'), num_classes=2, train_per_class=1, val_per_class=1, image_size=64)
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=2)
    first, second = synthetic_class_names(2)
    folder = save_pretrained(model, tmp_path / 'model', label_names=[second, first])
    with pytest.raises(ValueError, match=f"class 0 is '{second}' but the dataset's is '{first}'"):
        run(
            [
                'eval',
                '--checkpoint',
                str(folder),
                '--data-dir',
                data,
                '--img-size',
                '64',
                '--workers',
                '0',
                '--out',
                str(tmp_path / 'r.json'),
            ]
        )


def test_eval_takes_the_data_flags_of_train_and_picks_the_device_itself(tmp_path, capsys):
    from fgvc_zoo.runtime import resolve_device

    data = make_synthetic_fgvc(str(tmp_path / 'data'), num_classes=2, train_per_class=1, val_per_class=1, image_size=64)
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=2)
    folder = save_pretrained(model, tmp_path / 'model', label_names=synthetic_class_names(2))
    out = tmp_path / 'results.json'
    common = ['eval', '--checkpoint', str(folder), '--data-dir', data, '--workers', '0', '--img-size', '64']
    assert run([*common, '--dataset-layout', 'folder', '--out', str(out)]) == 0
    results = json.loads(out.read_text())
    assert results['dataset']['layout'] == 'folder'
    with pytest.raises(ValueError, match=r"options \['level'\] are not accepted by the 'folder' layout"):
        run([*common, '--dataset-layout', 'folder', '--dataset-args', 'level=family', '--out', str(out)])
    expected = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    with pytest.raises(ValueError, match='--device gpu0: not a torch device'):
        resolve_device('gpu0')
