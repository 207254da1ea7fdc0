"""Top-1, top-5, mean per-class accuracy and the confusion of a model on a dataset split.

Evaluation is where FGVC numbers go wrong, so `evaluate` is strict about three things: the model is always run in
eval mode (dropout off, BatchNorm running statistics), whatever mode it was handed in; every metric is
accumulated as integer counts over the whole split, never as a mean of per-batch means, so the result does not
depend on the batch size; and test-time augmentation is off unless asked for, and then recorded in the results.

The JSON `fgvc-zoo eval --out` writes carries a `metrics` mapping, which `fgvc_zoo.hub.card.model_card` puts in
the model card.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

__all__ = [
    'TTA_MODES',
    'evaluate',
    'confusion_summary',
    'confused_subset',
    'plot_confusion',
    'confusion_figure',
    'check_classes',
]

TTA_MODES = ('flip',)
MOST_CONFUSED = 10


@torch.no_grad()
def _predict_probs(model: nn.Module, x: torch.Tensor, tta: str | None) -> torch.Tensor:
    """Class probabilities (B, C); with `tta='flip'` the mean of the image's and its mirror's probabilities."""
    probs = model(x).float().softmax(dim=1)
    if tta == 'flip':
        probs = (probs + model(x.flip(-1)).float().softmax(dim=1)) / 2
    return probs


def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 32,
    tta: str | None = None,
    num_workers: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 / mean per-class accuracy (%) and the confusion matrix of `model` on `dataset`.

    `dataset[i]` is `(image_tensor, label)`; `dataset.classes` (if present) names the classes. The model runs in
    eval mode and is put back in the mode it came in. Returns `metrics` (top1, top5, mean_class_accuracy),
    `confusion` (C, C) counts (row: true class, column: predicted), `per_class_accuracy`, `num_images`, `topk`
    (the k of top-5, min(5, C)) and `tta`.
    """
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"tta='{tta}' is not one of {TTA_MODES} (or None, the default: no test-time augmentation).")
    if len(dataset) == 0:
        raise ValueError('evaluate got an empty dataset: check the data folder and --split.')
    num_classes = model.num_classes if hasattr(model, 'num_classes') else model.get_classifier().out_features
    device = device or next(model.parameters()).device
    topk = min(5, num_classes)
    correct1 = correct5 = 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        for x, y in tqdm(loader, desc='eval', unit='batch', disable=not progress):
            y = torch.as_tensor(y)
            if int(y.max()) >= num_classes:
                raise ValueError(
                    f"Label {int(y.max())} is outside the model's {num_classes} classes: the model was "
                    f'trained on another class list than this dataset.'
                )
            probs = _predict_probs(model, x.to(device), tta).cpu()
            top = probs.topk(topk, dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(dim=1).sum())
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
    finally:
        model.train(was_training)
    confusion = confusion.view(num_classes, num_classes)
    per_class_total = confusion.sum(dim=1)
    present = per_class_total > 0
    per_class = confusion.diagonal().double() / per_class_total.clamp_min(1)
    num_images = int(per_class_total.sum())
    names = _class_names(dataset, num_classes)
    return {
        'metrics': {
            'top1': 100 * correct1 / num_images,
            'top5': 100 * correct5 / num_images,
            # classes absent from the split have no accuracy; they are left out of the mean, not counted as 0
            'mean_class_accuracy': 100 * float(per_class[present].mean()),
        },
        'num_images': num_images,
        'num_classes': num_classes,
        'topk': topk,
        'tta': tta,
        'label_names': names,
        'per_class_accuracy': {names[i]: 100 * float(per_class[i]) for i in range(num_classes) if present[i]},
        'confusion': confusion.tolist(),
        'most_confused': confusion_summary(confusion, names),
    }


def _class_names(dataset: Any, num_classes: int) -> list[str]:
    classes = list(getattr(dataset, 'classes', None) or [])
    return classes + [str(i) for i in range(len(classes), num_classes)]


def confusion_summary(confusion: torch.Tensor, names: Sequence[str], num: int = MOST_CONFUSED) -> list[dict[str, Any]]:
    """The `num` largest off-diagonal cells of a (C, C) confusion matrix, largest first, zeros left out."""
    confusion = torch.as_tensor(confusion).clone()
    confusion.fill_diagonal_(0)
    counts, flat = confusion.flatten().sort(descending=True, stable=True)
    num_classes = confusion.shape[0]
    pairs = []
    for count, index in zip(counts[:num].tolist(), flat[:num].tolist(), strict=False):
        if count == 0:
            break
        true, predicted = divmod(index, num_classes)
        pairs.append({'true': names[true], 'predicted': names[predicted], 'count': count})
    return pairs


def confused_subset(confusion: torch.Tensor, most: int) -> list[int]:
    """The classes of the largest off-diagonal cells, largest first, until `most` classes are in (all if fewer).

    200 classes make a 200 x 200 matrix nobody can read; the classes a model mixes up are the ones worth a name.
    """
    confusion = torch.as_tensor(confusion)
    num_classes = confusion.shape[0]
    if num_classes <= most:
        return list(range(num_classes))
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True, stable=True)
    chosen: list[int] = []
    for count, index in zip(counts.tolist(), flat.tolist(), strict=False):
        if count == 0 or len(chosen) >= most:
            break
        for k in divmod(index, num_classes):
            if k not in chosen and len(chosen) < most:
                chosen.append(k)
    # a model that confuses few classes: fill up with the least accurate of the others
    accuracy = confusion.diagonal().double() / confusion.sum(dim=1).clamp_min(1)
    for k in accuracy.argsort(stable=True).tolist():
        if len(chosen) >= most:
            break
        if k not in chosen:
            chosen.append(k)
    return sorted(chosen)


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    names: Sequence[str],
    path: str,
    title: str = '',
    most: int = 30,
) -> str:
    """Confusion matrix as a PNG (`confusion_figure`)."""
    confusion_figure(confusion, names, title, most).savefig(path, dpi=100)
    return path


def confusion_figure(confusion: Sequence[Sequence[int]], names: Sequence[str], title: str = '', most: int = 30):
    """Colour is the share of the true class, each non-zero cell shows its count.

    Beyond `most` classes only the most confused ones are drawn (`confused_subset`), with a last column counting
    the predictions of the classes left out, so every row still sums to its class's images. A Figure of its own
    (Agg canvas): no pyplot state, the caller's backend untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = torch.as_tensor(confusion, dtype=torch.long)
    num_classes = counts.shape[0]
    shown = confused_subset(counts, most)
    sub = counts[shown][:, shown]
    columns = [names[k] for k in shown]
    if len(shown) < num_classes:
        sub = torch.cat([sub, (counts[shown].sum(dim=1) - sub.sum(dim=1))[:, None]], dim=1)
        columns.append('(other classes)')
        title = f'{title or "confusion matrix"}: the {len(shown)} most confused of {num_classes} classes'
    rates = sub.double() / counts[shown].sum(dim=1, keepdim=True).clamp_min(1)
    longest = max(len(str(n)) for n in columns)
    cell = 0.32 if len(shown) > 12 else 0.5
    label_in = 0.07 * longest  # room for the class names, in inches at font size 7
    fig = Figure(figsize=(len(columns) * cell + label_in + 2.2, len(shown) * cell + label_in + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='share of the true class')
    size = 7 if len(shown) > 12 else 9
    for (i, j), count in np.ndenumerate(sub.numpy()):
        if count:
            colour = 'white' if rates[i, j] > 0.5 else 'black'
            ax.text(j, i, str(count), ha='center', va='center', fontsize=size - 1, color=colour)
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=size)
    ax.set_yticks(range(len(shown)), [names[k] for k in shown], fontsize=size)
    ax.set(xlabel='predicted class', ylabel='true class', title=title or 'confusion matrix')
    fig.tight_layout()
    return fig


def check_classes(model_names: list[str] | None, dataset_names: list[str], num_classes: int, source: str) -> None:
    if len(dataset_names) != num_classes:
        raise ValueError(
            f'{source} predicts {num_classes} classes but the dataset has {len(dataset_names)}: '
            f'evaluate it on the dataset it was trained on.'
        )
    if model_names is not None and list(model_names) != list(dataset_names):
        differ = next(i for i, (a, b) in enumerate(zip(model_names, dataset_names, strict=False)) if a != b)
        raise ValueError(
            f"{source}'s class {differ} is '{model_names[differ]}' but the dataset's is "
            f"'{dataset_names[differ]}': the class lists differ (names or order), so the accuracy "
            f'would be meaningless.'
        )
