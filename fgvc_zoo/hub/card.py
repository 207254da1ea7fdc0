"""The model card of an export: huggingface_hub's `ModelCardData` front matter (model-index with accuracies only)
and the card template (`fgvc_zoo/templates/model_card.md`, package data read with importlib.resources) filled from
`config.json`, the trainer's `results.json` and the head's own `paper` (title, description, BibTeX, paper
results). Honest by construction: `base_model` and "fine-tuned from" come from the `pretrained_weights` record.
"""

import json
import os
import string
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData
from timm.models import split_model_name_tag

from ..models import DEFAULT_BACKBONE, PaperInfo, head_class, split_model_name

__all__ = ['NOT_RECORDED', 'RESULTS_NAME', 'base_model', 'model_card', 'pretraining_data', 'read_template']

RESULTS_NAME = 'results.json'
# The card template is package data: a wheel installed anywhere has it (see [tool.setuptools.package-data]).
TEMPLATE_RESOURCE = ('templates', 'model_card.md')
# `pretrained_weights` of a model whose start is unknown (built from a bare checkpoint): the card says so.
NOT_RECORDED = object()

TIMM_BIBTEX = (
    '@misc{rw2019timm,\n'
    '  author = {Ross Wightman},\n'
    '  title = {PyTorch Image Models},\n'
    '  year = {2019},\n'
    '  publisher = {GitHub},\n'
    '  journal = {GitHub repository},\n'
    '  doi = {10.5281/zenodo.4414861},\n'
    '  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}\n'
    '}'
)


def base_model(pretrained_weights: dict[str, str] | None) -> str | None:
    """The Hub repo the weights started from (`timm/resnet50.a1_in1k`), or None: random init or a non-Hub source."""
    if isinstance(pretrained_weights, dict) and pretrained_weights.get('source') == 'hf-hub':
        return pretrained_weights['id']
    return None


def _plain_info(architecture: str) -> PaperInfo:
    """The card text of a plain timm classifier that fgvc_zoo's trainer fine-tuned (the heads' baseline)."""
    return PaperInfo(
        title="timm's own classifier",
        description=(
            f"A plain fine-tune of timm's `{architecture}` (its own pooling and linear classifier, no FGVC head), "
            'trained with cross-entropy by the fgvc_zoo trainer: the baseline that the FGVC heads are compared with.'
        ),
        bibtex='% no FGVC method: a plain timm fine-tune (cite timm, below)',
    )


def _dataset_name(results: dict[str, Any], recipe: dict[str, Any]) -> str | None:
    for source in (results, recipe):
        dataset = source.get('dataset')
        if isinstance(dataset, dict):
            dataset = dataset.get('name')
        if dataset:
            return str(dataset)
    return None


def _metrics(results: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of results.json, under its names: `top5` stays `top5` with fewer than 5 classes (the true
    class is then always among the 5 best), as in results.json, eval.json, metrics.csv and timm."""
    metrics = results.get('metrics')
    if not isinstance(metrics, dict):
        raise ValueError(f"{RESULTS_NAME} needs a 'metrics' mapping (e.g. {{'top1': 87.1, 'top5': 97.0}}).")
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _split_evaluated(results: dict[str, Any]) -> str | None:
    """'test', 'val', ... : the split the metrics were measured on (the trainer's `eval_split`, eval's split)."""
    dataset = results.get('dataset')
    split = results.get('eval_split') or (dataset.get('split') if isinstance(dataset, dict) else None)
    return {'validation': 'val'}.get(split, split) if isinstance(split, str) else None


def _split_phrase(split: str | None, results: dict[str, Any]) -> str:
    if split == 'val' and (results.get('config') or {}).get('val_fraction'):
        return 'validation split carved from the training images (not the test split)'
    return {None: 'held-out split (not recorded which)', 'val': 'validation split (not the test split)'}.get(
        split, f'{split} split'
    )


def _is_accuracy(metric: str) -> bool:
    return (metric.startswith('top') and metric[3:].isdigit()) or 'acc' in metric


def _results_table(
    info: PaperInfo, backbone: str, dataset: str | None, metrics: dict[str, float], split: str | None
) -> str:
    # The papers report test accuracy: a val number is not set beside them.
    same = split_model_name_tag(backbone)[0] == info.backbone and split in ('test', None)
    paper = info.results.get(dataset or '', []) if same else []
    paper_top1 = '; '.join(f'{value:.1f} ({setting})' for setting, value in paper) or 'n/a'
    rows = ['| metric | this model | paper |', '|---|---|---|']
    for name, value in metrics.items():
        rows.append(f'| {name} | {value:.2f} | {paper_top1 if name in ("top1", "acc1", "top1_acc") else "n/a"} |')
    if not metrics:
        rows.append(f'| (not evaluated) | n/a | {paper_top1} |')
    return '\n'.join(rows)


def _describe_weights(weights: dict[str, str] | None | object) -> tuple[str, str]:
    """(sentence for the introduction, short form for the description list) of where the weights started."""
    if weights is NOT_RECORDED:
        return (
            'Where its weights started from was not recorded (exported from a bare checkpoint).',
            'not recorded',
        )
    if weights is None:
        return 'Trained from random initialisation: no pretrained weights were loaded.', 'none (random initialisation)'
    part = weights.get('part', 'model')
    if weights.get('source') == 'hf-hub':
        name = f'[`{weights["id"]}`](https://huggingface.co/{weights["id"]})'
        if weights.get('revision'):
            name += f' at revision `{weights["revision"]}`'
    elif weights.get('sha256'):
        name = f'the local file `{weights["id"]}` ({weights["size"]} bytes, sha256 `{weights["sha256"]}`)'
    else:
        name = f'`{weights["id"]}` ({weights.get("source", "file")})'
    head_note = '; the head started from random initialisation' if part == 'backbone' else ''
    data = pretraining_data(weights['id']) if part == 'backbone' else None
    data_note = f' Backbone pretraining data: {data}.' if data else ''
    return f'Fine-tuned from {name} ({part} weights{head_note}).{data_note}', f'{name} ({part})'


# The backbone's pool (`Backbone.pool`) -> what the head reads of it (docs/methods.md, "the backbone adapter").
AVERAGE_FEATURES = (
    "The head reads the backbone's final feature map, whose average is the backbone's own pre-logits feature (what "
    "timm's classifier of it reads)."
)
BACKBONE_FEATURES = {
    'avg': AVERAGE_FEATURES,
    'fast': AVERAGE_FEATURES,
    'token': (
        'The backbone pools with its CLS token: the head reads the patch tokens after the final norm as a map '
        '(their average, not the CLS token, is the image feature), and the pool and classifier are removed.'
    ),
    'map': 'The backbone pools with attention: the head reads the map that pool reads, and the pool is removed.',
    'attention': 'The backbone pools with attention: the head reads the map that pool reads, and the pool is removed.',
}


def _backbone_features(pool: str, removed: list[str]) -> str | None:
    """What the head reads of a backbone with pool `pool` whose layers `removed` (`Backbone.removed`) are gone."""
    if BACKBONE_FEATURES.get(pool) is AVERAGE_FEATURES and removed:
        layers = ', '.join(f'`{name}`' for name in removed)
        return (
            'The backbone averages its final feature map, then applies layers that act on the pooled vector only '
            f"({layers}): these were removed, and the head reads the map that average pools, not the backbone's "
            'pre-logits feature.'
        )
    return BACKBONE_FEATURES.get(pool)


# timm tag fragments -> the data the weights were pretrained on (the first match wins).
PRETRAINING_DATA = (
    ('in22k', 'ImageNet-22k'),
    ('in21k', 'ImageNet-21k'),
    ('lvd142m', 'LVD-142M (DINOv2)'),
    ('laion', 'LAION'),
    ('openai', "OpenAI's CLIP data"),
    ('webli', 'WebLI'),
    ('in1k', 'ImageNet-1k'),
)


def pretraining_data(weights_id: str) -> str | None:
    """The data a timm backbone tag was pretrained on (`timm/resnet50.tv_in1k` -> ImageNet-1k), None if unknown.

    ImageNet-21k/22k hold images of CUB-200-2011's species (some of them CUB's own photos): the card says so, as
    accuracies from such a start are not comparable with the papers' ImageNet-1k ResNet-50.
    """
    tag = split_model_name_tag(weights_id.rsplit('/', 1)[-1])[1]
    parts = tag.split('_')
    for fragment, data in PRETRAINING_DATA:
        if any(part.startswith(fragment) for part in parts):
            if fragment in ('in21k', 'in22k'):
                data += ' (then ImageNet-1k)' if 'in1k' in parts else ''
                data += ", which overlaps CUB-200-2011's images"
            return f'{data} (tag `{tag}`)'
    return None


def read_template(template: str | os.PathLike | None = None) -> str:
    """The card template: the one in the package, or the file `template`."""
    if template is None:
        return resources.files('fgvc_zoo').joinpath(*TEMPLATE_RESOURCE).read_text(encoding='utf-8')
    if not Path(template).is_file():
        raise FileNotFoundError(f"Model card template '{template}' not found: pass an existing file, or None for ours.")
    return Path(template).read_text(encoding='utf-8')


def model_card(
    config: dict[str, Any],
    results: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    repo_id: str | None = None,
    template: str | os.PathLike | None = None,
) -> str:
    """The model card of an export: YAML front matter with model-index, then the filled card template.

    Honest by construction: `base_model` and "fine-tuned from" come from the `pretrained_weights` record of
    `config` (absent: not recorded; None: random initialisation) and the model-index holds accuracies only.
    """
    results = results or {}
    recipe = recipe if recipe is not None else results.get('config', {})
    architecture = config['architecture']
    head, backbone, _ = split_model_name(architecture)
    model_args = config.get('model_args', {})
    if head:  # a generic head's backbone is an argument, DEFAULT_BACKBONE when none was given
        backbone = model_args.get('backbone', backbone or DEFAULT_BACKBONE)
    dataset = _dataset_name(results, recipe)
    metrics = _metrics(results) if results else {}
    split = _split_evaluated(results)
    model_name = repo_id.split('/')[-1] if repo_id else architecture
    weights = config.get('pretrained_weights', NOT_RECORDED)
    card_data = ModelCardData(
        pipeline_tag='image-classification',
        library_name='timm',
        license=config.get('pretrained_cfg', {}).get('license', 'apache-2.0'),
        tags=['image-classification', 'timm', 'fgvc', 'fine-grained', head or 'fine-tune', 'fgvc_zoo'],
        datasets=[dataset] if dataset else None,
        base_model=base_model(weights),
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type='image-classification',
                dataset_type=dataset or 'unknown',
                dataset_name=dataset or 'unknown',
                metric_type='accuracy',
                metric_name=name,
                metric_value=value,
                dataset_split=split,
            )
            for name, value in metrics.items()
            if _is_accuracy(name)
        ]
        or None,
    )
    info = (head_class(head).paper if head else None) or _plain_info(architecture)
    load_name = f'hf-hub:{repo_id}' if repo_id else 'local-dir:path/to/this/folder'
    provenance, initial_weights = _describe_weights(weights)
    features = _backbone_features(config.get('backbone_pool', ''), config.get('backbone_removed', []))
    if features:
        provenance = f'{provenance} {features}'
    body = string.Template(read_template(template)).substitute(
        front_matter=card_data.to_yaml(),
        model_name=model_name,
        title=info.title,
        description=info.description,
        architecture=architecture,
        backbone=backbone,
        provenance=provenance,
        initial_weights=initial_weights,
        dataset=dataset or 'unknown',
        num_classes=config['num_classes'],
        input_size='x'.join(str(s) for s in config.get('pretrained_cfg', {}).get('input_size', ())),
        results_table=_results_table(info, backbone, dataset, metrics, split),
        split=_split_phrase(split, results),
        model_args=json.dumps(model_args, indent=2, sort_keys=True),
        recipe=json.dumps(recipe, indent=2, sort_keys=True, default=str) if recipe else 'not recorded',
        load_name=load_name,
        method_bibtex=info.bibtex,
        timm_bibtex=TIMM_BIBTEX,
    )
    return body
