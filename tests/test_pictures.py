"""The PNGs a user publishes: training curves, explanations and confusion matrices are legible, and drawing them
changes nothing in the caller's matplotlib (a notebook's backend and its pyplot figures).

Legible is checked on the figures themselves: every text's rendered extent lies inside the picture and overlaps no
other text, at several image sizes and aspect ratios; each loss has its own axes; epochs are whole numbers.
"""

import ast
import itertools
import math
from pathlib import Path

import matplotlib
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T

import fgvc_zoo
from fgvc_zoo.compare import report as compare_report
from fgvc_zoo.inference.evaluate import confused_subset, confusion_figure, plot_confusion
from fgvc_zoo.inference.explain import draw_explanation, explain_images, explanation_figure
from fgvc_zoo.training.loop import curve_panels, curves_figure


def text_problems(fig) -> list[str]:
    """Texts (titles, labels, tags, visible tick labels) that leave the figure or overlap another text."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = list(fig.texts) + [t for ax in fig.axes for t in ax.texts]
    for ax in fig.axes:
        if ax.axison:
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
            for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
                texts += [
                    tick.label1 for tick in axis.get_major_ticks() if min(limits) <= tick.get_loc() <= max(limits)
                ]
    extents = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    width, height = fig.bbox.width, fig.bbox.height
    problems = [
        f'{text!r} is cut by the border'
        for text, e in extents
        if e.x0 < -0.5 or e.y0 < -0.5 or e.x1 > width + 0.5 or e.y1 > height + 0.5
    ]
    problems += [f'{a!r} overlaps {b!r}' for (a, ea), (b, eb) in itertools.combinations(extents, 2) if ea.overlaps(eb)]
    return problems


LFD_HISTORY = [
    {'epoch': e, 'lr': 0.01, 'train_loss': 3.0 / e, 'train_loss_image': 1.0 / e, 'train_loss_region': 1.0 / e,
     'train_loss_hybrid': 1.0 / e, 'val_loss': 0.9 / e, 'val_top1': 40.0 + e, 'val_top5': 80.0 + e}
    for e in range(1, 8)
]  # fmt: skip


def test_every_loss_has_its_own_axes_and_epochs_are_whole_numbers():
    panels = curve_panels(LFD_HISTORY)
    loss_panels = [keys for _, _, keys in panels if any('loss' in k for k in keys)]
    assert sorted(k for keys in loss_panels for k in keys) == sorted(k for k in LFD_HISTORY[0] if 'loss' in k)
    assert all(len(keys) == 1 for keys in loss_panels)  # the sum, each term and the validation CE apart
    fig = curves_figure(LFD_HISTORY)
    for ax in fig.axes:
        if ax.axison:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ax.get_title()
    assert text_problems(fig) == []


HEADS = [
    ('lfd', {}),
    ('dpnet', {'part_box_cells': 1}),
    ('iagn', {'mid_channels': 16, 'feature_channels': 32, 'hidden_features': 16}),
]


@pytest.mark.parametrize('head, args', HEADS)
@pytest.mark.parametrize('size', [(64, 32), (512, 300), (300, 700), (1400, 500)])
@pytest.mark.parametrize('view', ['full', 'crop'])
def test_explanation_labels_never_clip_or_overlap(head, args, size, view):
    model = timm.create_model(head, backbone='test_resnet', num_classes=3, **args).eval()
    transform = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor()])
    generator = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(size[1], size[0], 3, generator=generator) * 255).byte().numpy())
    names = ['ant', 'bee', 'a class with a rather long name']
    (explained,) = explain_images(model, [image], transform, names, view=view)
    fig = explanation_figure(explained)
    assert tuple(round(v) for v in fig.bbox.size) == explained.png_size
    assert text_problems(fig) == []


def test_the_confused_subset_takes_the_largest_confusions_first():
    confusion = torch.eye(6, dtype=torch.long) * 10
    confusion[4, 1] = 5  # the largest confusion: classes 4 and 1
    confusion[2, 5] = 3  # then 2 and 5
    assert confused_subset(confusion, 3) == [1, 2, 4]
    assert confused_subset(confusion, 4) == [1, 2, 4, 5]
    assert confused_subset(confusion, 10) == list(range(6))


@pytest.mark.parametrize('num_classes', [4, 200])
def test_confusion_cells_show_counts_and_200_classes_stay_readable(num_classes):
    generator = torch.Generator().manual_seed(0)
    confusion = torch.randint(0, 3, (num_classes, num_classes), generator=generator) * (
        torch.rand(num_classes, num_classes, generator=generator) < 0.02
    ) + 5 * torch.eye(num_classes, dtype=torch.long)
    names = [f'{k + 1:03d}.Black_footed_Albatross_{k}' for k in range(num_classes)]
    fig = confusion_figure(confusion.tolist(), names, title='lfd on val', most=30)
    ax = fig.axes[0]
    shown = min(num_classes, 30)
    assert len(ax.get_yticklabels()) == shown and math.isclose(
        ax.get_xlim()[1] - ax.get_xlim()[0], shown + (num_classes > 30)
    )
    drawn = sorted(int(t.get_text()) for t in ax.texts)
    rows = confused_subset(confusion, 30)
    sub = confusion[rows][:, rows]
    expected = sub.flatten().tolist()
    if num_classes > 30:
        expected += (confusion[rows].sum(1) - sub.sum(1)).tolist()
    assert drawn == sorted(c for c in expected if c)
    assert text_problems(fig) == []


@pytest.fixture
def notebook_backend():
    """A caller's own backend that is not Agg (svg, which needs no display), restored afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use('svg')
    yield 'svg'
    matplotlib.use(before)


def test_library_figures_leave_the_callers_backend_and_pyplot_figures_alone(notebook_backend, tmp_path):
    import matplotlib.pyplot as plt

    plt.figure()  # the notebook's own open figure
    open_figures = plt.get_fignums()
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3).eval()
    image = Image.fromarray((torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    (explained,) = explain_images(model, [image], T.Compose([T.Resize(64), T.ToTensor()]), ['ant', 'bee', 'cat'])
    confusion = (torch.eye(3, dtype=torch.long) * 4 + 1).tolist()
    summary = {
        method: {'test_top1': [50.0, 60.0], 'test_top1_mean': 55.0, 'test_top1_std': 5.0,
                 'test_mean_class_accuracy': [50.0, 60.0], 'test_mean_class_accuracy_mean': 55.0,
                 'test_mean_class_accuracy_std': 5.0}
        for method in ('plain', 'lfd')
    }  # fmt: skip
    summary['lfd'].update(per_class_vs='plain', per_class_diff={'ant': 5.0, 'bee': -5.0, 'cat': 0.0})

    figures = [
        curves_figure(LFD_HISTORY),
        explanation_figure(explained),
        confusion_figure(confusion, ['ant', 'bee', 'cat']),
    ]
    draw_explanation(explained, str(tmp_path / 'explain.png'))
    plot_confusion(confusion, ['ant', 'bee', 'cat'], str(tmp_path / 'confusion.png'))
    compare_report.figures(summary, ['ant', 'bee', 'cat'], tmp_path)

    assert matplotlib.get_backend() == notebook_backend
    assert plt.get_fignums() == open_figures
    assert all(f.canvas.get_renderer() for f in figures)  # each figure draws on a canvas of its own
    assert {p.name for p in tmp_path.iterdir()} == {'explain.png', 'confusion.png', 'bars.png', 'per_class.png'}


PACKAGE = Path(fgvc_zoo.__file__).parent


def global_matplotlib_uses(source: str) -> list[str]:
    """Lines of `source` that import pyplot (its figure list is the process's) or call `matplotlib.use`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f'{node.module}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f'{node.value.id}.{node.attr}']
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]  # importlib.import_module('matplotlib.pyplot')
        else:
            continue
        if any(n.startswith(('matplotlib.pyplot', 'pylab')) or n == 'matplotlib.use' for n in names):
            found.append(f'line {node.lineno}: {", ".join(names)}')
    return found


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_pyplot_nor_switches_the_backend(path):
    assert global_matplotlib_uses(path.read_text()) == []


@pytest.mark.parametrize(
    'source',
    [
        'import matplotlib.pyplot as plt',
        'from matplotlib import pyplot',
        'from matplotlib.pyplot import subplots',
        'import matplotlib\nmatplotlib.use("Agg")',
        'from matplotlib import use',
        'import importlib\nimportlib.import_module("matplotlib.pyplot")',
    ],
)
def test_each_global_matplotlib_use_is_found(source):
    assert global_matplotlib_uses(source)
