"""The page of `fgvc-zoo demo` and the Space folder of `fgvc-zoo space`: a page where a person uploads a photo
and sees what the head looks at.

The page shows the top-k classes with probabilities and the head's explanation panels, drawn by
`fgvc_zoo.inference.explain.draw_explanation` (the same PNG as `fgvc-zoo explain`), with a legend saying what each panel
means for that head. Models load with `load_for_inference`, the code path of `fgvc-zoo predict`, so the page's top-1
is predict's top-1: same weights, same preprocessing from the checkpoint's config, same `predict` function.

Every upload is decoded by `fgvc_zoo.data.load_image` (CMYK, 16-bit, transparent and grayscale files become RGB);
a file it refuses (not an image, truncated, empty, decompression-bomb sized) gets a one-line message in the page
and the server keeps serving. gradio is an optional dependency (`pip install "fgvc-zoo[demo]"`), imported only
when a page is built.

`fgvc-zoo space DIR OUT` writes a folder that runs as a Hugging Face Space (`sdk: gradio`): `app.py` calling
`build_demo`, the model's weights and config, example images, `requirements.txt` pinned to this fgvc-zoo version
and the README front matter the Hub reads; `fgvc-zoo push OUT ORG/NAME --space` uploads it.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch.nn as nn
from huggingface_hub import SpaceCardData
from PIL import Image

from . import __version__
from .data import UnreadableImageError, check_image, load_image
from .errors import UsageError
from .hub import CONFIG_NAME, WEIGHTS_NAME, check_export_folder, read_results
from .hub.upload import SPACE_EXAMPLES_DIR, SPACE_MODEL_DIR, SPACE_WHEELS_DIR
from .inference.explain import draw_explanation, explain_images
from .inference.predict import predict
from .models import split_model_name
from .runtime import load_for_inference

__all__ = [
    'DemoModel',
    'DemoAnswer',
    'load_demo_model',
    'answer',
    'import_gradio',
    'build_demo',
    'find_examples',
    'checked_examples',
    'served_folders',
    'write_space',
]

GRADIO_HINT = 'the demo needs gradio: pip install "fgvc-zoo[demo]"'
IMAGE_HINT = 'upload a photo (JPEG, PNG, WebP, BMP, TIFF or GIF)'
EXAMPLES_PER_MODEL = 6
# A Space is an application installed from scratch: without bounds pip takes the newest torch, which CI has not
# tested (README, "Supported versions") and may have no torchvision built for it yet. The package itself has no
# upper torch bound (pyproject.toml says why).
SPACE_TORCH = ('torch>=2.4,<2.15', 'torchvision>=0.19,<0.30')


@dataclass
class DemoModel:
    """One checkpoint of the page: the model, the eval transform of its config and its class names."""

    name: str
    model: nn.Module
    transform: Callable
    label_names: list[str] | None


@dataclass
class DemoAnswer:
    """What the page shows for one upload; `message` explains a refusal (then nothing else is set)."""

    probabilities: dict[str, float]
    explanation: Image.Image | None
    legend: str
    message: str


def load_demo_model(
    source: str, img_size: int | None = None, device: str = 'cpu', name: str | None = None
) -> DemoModel:
    """Load `source` (export folder, hf-hub:ORG/NAME or tag) exactly as `fgvc-zoo predict --checkpoint` does."""
    model, transform, names, _ = load_for_inference(source, img_size=img_size, device=device)
    return DemoModel(name or source, model, transform, names)


def _legend(head: str, legend: str, panels: Sequence[str]) -> str:
    """The page's legend: what the head's panels mean (its `explanation_legend`), then their titles in order."""
    rows = '\n'.join(f'{k}. {title}' for k, title in enumerate(panels, 1))
    return f'**How to read the panels** ({head})\n\n{legend}\n\nPanels, left to right:\n\n{rows}'


def _render(explained: Any) -> Image.Image:
    """The PNG `draw_explanation` writes, as an image (it draws to a file; the page shows pixels)."""
    with tempfile.TemporaryDirectory(prefix='fgvc_zoo_demo_') as folder:
        path = draw_explanation(explained, os.path.join(folder, 'explain.png'))
        with Image.open(path) as png:
            return png.convert('RGB')


def answer(demo_model: DemoModel, image_path: str | None, topk: int = 5, name: str | None = None) -> DemoAnswer:
    """Top-k and explanation of one uploaded file (`name`: what to call it, default its file name), or a one-line
    reason it cannot be read."""
    if not image_path:
        return DemoAnswer({}, None, '', f'No image yet: {IMAGE_HINT}, or pick an example.')
    name = name or Path(image_path).name
    source = io.BytesIO(Path(image_path).read_bytes())
    try:
        image = load_image(name, source)
    except UnreadableImageError as e:
        reason = e.reason.replace(repr(source), repr(name))  # PIL names the buffer it read, not the file
        return DemoAnswer({}, None, '', f'**Cannot read {name}**: {reason}. Please {IMAGE_HINT}.')
    (top,) = predict(demo_model.model, [image], demo_model.transform, demo_model.label_names, topk)
    # The view predict sees (the eval centre crop), so that the panel's probability is the one in the results.
    (explained,) = explain_images(demo_model.model, [image], demo_model.transform, demo_model.label_names, view='crop')
    if explained.label != top[0]['label']:
        raise RuntimeError(
            f'{demo_model.name}: explain() predicts {explained.label} but forward() predicts {top[0]["label"]} '
            f"on {name}; the head's explain() must use the logits of forward()."
        )
    probabilities = {p['label']: p['probability'] for p in top}
    legend = _legend(explained.head, explained.legend, [panel.title for panel in explained.panels])
    best = top[0]
    message = (
        f'Top-1: **{best["label"]}** ({best["probability"]:.1%}) for {name} ({image.width}x{image.height} px), '
        f'checkpoint {demo_model.name}'
    )
    return DemoAnswer(probabilities, _render(explained), legend, message)


def import_gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f'{GRADIO_HINT} ({e}).') from None
    return gr


def _uploaded_path(payload: Any) -> tuple[str | None, str | None]:
    """(path in gradio's upload cache, the name the person's file had) of an image payload left unprocessed."""
    if not payload:
        return None, None
    payload = payload if isinstance(payload, dict) else payload.model_dump()
    path = payload.get('path')
    return path, payload.get('orig_name') or (Path(path).name if path else None)


def build_demo(models: Sequence[DemoModel], examples: Sequence[str] = (), topk: int = 5, title: str | None = None):
    """The gradio Blocks page: checkpoint picker, image upload, examples, top-k, explanation and legend."""
    gr = import_gradio()
    if not models:
        raise ValueError('build_demo needs at least one model.')
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f'Two checkpoints share a name: {[m.name for m in models]}; give each a different one.')
    title = title or 'fgvc_zoo: what a fine-grained head looks at'

    def classify(upload: Any, checkpoint: str):
        # preprocess=False: gradio's own image preprocessing opens the file with PIL and fails on a non-image with
        # a bare error; `answer` decodes it instead, and gets to say what is wrong with the file
        path, name = _uploaded_path(upload)
        result = answer(by_name[checkpoint], path, topk, name=name)
        return result.probabilities or None, result.explanation, result.legend, result.message

    with gr.Blocks(title=title) as page:
        gr.Markdown(f'# {title}\nUpload a photo or pick an example: the top classes and what the head used.')
        with gr.Row():
            with gr.Column():
                checkpoint = gr.Dropdown(
                    choices=list(by_name),
                    value=models[0].name,
                    label='Checkpoint',
                    interactive=len(models) > 1,
                    elem_id='checkpoint',
                )
                image = gr.Image(type='filepath', label='Image', sources=['upload', 'clipboard'], elem_id='image')
                picked = None
                if examples:
                    picked = gr.Examples(
                        examples=[[str(path)] for path in examples],
                        inputs=[image],
                        label='Examples',
                        elem_id='examples',
                    )
            with gr.Column():
                message = gr.Markdown(elem_id='message')
                top = gr.Label(num_top_classes=topk, label='Top classes', elem_id='top-classes')
        gr.Markdown('### What the head looks at')  # a heading, not the image's label, which would cover a panel
        explanation = gr.Image(
            label='What the head looks at',
            show_label=False,
            format='png',
            interactive=False,
            buttons=['download', 'fullscreen'],
            elem_id='explanation',
        )
        legend = gr.Markdown(elem_id='legend')
        outputs = [top, explanation, legend, message]
        # One queue for the three triggers, one request at a time. Not for pyplot (draw_explanation draws on a Figure
        # of its own): matplotlib promises no thread safety for its artists even on separate figures, and the model's
        # forwards on a CPU server would only share the same cores. `input`, not `change`: gradio fires `change`
        # twice when an upload replaces an image.
        run = dict(fn=classify, inputs=[image, checkpoint], outputs=outputs, preprocess=False, concurrency_id='model')
        image.input(**run, api_name='classify')
        checkpoint.change(**run, api_visibility='private')
        if picked is not None:  # clicking an example sets the image without an `input` event
            picked.load_input_event.then(**run, api_visibility='private')
    return page


def find_examples(checkpoint: str, limit: int = EXAMPLES_PER_MODEL) -> list[str]:
    """Example images of a trained folder: the first validation image of each class of the data it was trained on
    (its synthetic data, or the image folder results.json names), when that data is a folder of class folders."""
    folder = Path(checkpoint)
    results = read_results(folder)
    split = results.get('config', {}).get('val_split') or 'val'
    candidates = [folder / 'synthetic_data' / split]
    if results.get('dataset', {}).get('root'):
        candidates.append(Path(results['dataset']['root']) / split)
    val = next((c for c in candidates if c.is_dir()), None)
    if val is None:
        return []
    firsts = []
    for classes in sorted(c for c in val.iterdir() if c.is_dir()):
        readable = next((f for f in sorted(classes.iterdir()) if check_image(str(f)) is None), None)
        if readable is not None:
            firsts.append(str(readable))
        if len(firsts) == limit:
            break
    return firsts


def checked_examples(examples: Sequence[str]) -> list[str]:
    for path in examples:
        reason = check_image(path)
        if reason is not None:
            raise UsageError(f'--examples {path}: {reason}. Pass image files.')
    return [str(path) for path in examples]


def served_folders(examples: Sequence[str]) -> list[str]:
    return sorted({str(Path(path).resolve().parent) for path in examples})


# ---------------------------------------------------------------------------------------------- Space

APP_TEMPLATE = '''"""Gradio Space of an fgvc_zoo model, written by `fgvc-zoo space` (fgvc-zoo {version}).

Run it locally with `python app.py`; on the Hub the Space runs it. GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
choose the address.
"""

from pathlib import Path

from fgvc_zoo.demo import build_demo, load_demo_model

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(str(path) for path in (HERE / '{examples}').iterdir())
demo = build_demo([load_demo_model(str(HERE / '{model}'), name={name!r})], EXAMPLES, topk={topk}, title={title!r})

if __name__ == '__main__':
    demo.launch(allowed_paths=[str(HERE / '{examples}')])
'''


def _gradio_version() -> str:
    try:
        return version('gradio')
    except PackageNotFoundError:
        raise ImportError(f'{GRADIO_HINT}: the Space README pins the gradio version the app was built with.') from None


def _space_requirements(out: Path) -> list[str]:
    """The lines of the Space's requirements.txt: this fgvc-zoo and the tested torch range. Run from a source tree
    (any version before its release, which no index has), fgvc-zoo is the wheel built from that tree into the
    Space's `wheels/`, found through `--find-links`, which pip resolves against the requirements file (a path
    requirement it would resolve against the folder pip runs in); from an installed release, that release on the
    package index."""
    requirement = [f'fgvc-zoo[demo]=={__version__}', *SPACE_TORCH]
    root = Path(__file__).resolve().parents[1]
    if not (root / 'pyproject.toml').is_file():
        return requirement
    try:  # the build runs without isolation (no index needed), so with this environment's setuptools
        setuptools_version = version('setuptools')
    except PackageNotFoundError:
        setuptools_version = '0'
    if int(setuptools_version.split('.')[0]) < 77:
        raise RuntimeError(
            f"fgvc-zoo space builds the wheel of {root} with this environment's setuptools, {setuptools_version}, "
            f'but its pyproject.toml needs setuptools>=77: pip install "setuptools>=77" and rerun.'
        )
    wheels = out / SPACE_WHEELS_DIR
    command = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(wheels)]
    built = subprocess.run([*command, str(root)], capture_output=True, text=True)
    found = sorted(wheels.glob('fgvc_zoo-*.whl')) if wheels.is_dir() else []
    if built.returncode != 0 or len(found) != 1:
        raise RuntimeError(f'Could not build the fgvc-zoo wheel of {root} for the Space: {built.stderr.strip()[-300:]}')
    return [f'--find-links ./{SPACE_WHEELS_DIR}', *requirement]


def write_space(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    examples: Sequence[str] | None = None,
    title: str | None = None,
    topk: int = 5,
) -> Path:
    """Write a Space folder for the export in `checkpoint`: app.py, model/, examples/, wheels/ (this fgvc-zoo),
    requirements.txt, README."""
    checkpoint, out = Path(checkpoint), Path(out)
    config = check_export_folder(checkpoint)
    examples = find_examples(str(checkpoint)) if examples is None else checked_examples(examples)
    if not examples:
        raise UsageError(
            f'{checkpoint} has no image folder of validation images (its synthetic_data, or the one its '
            f'results.json names) to take examples from: pass --examples IMAGE ... '
            f'(a Space shows them under the upload box).'
        )
    if out.exists() and any(out.iterdir()):
        raise UsageError(f'{out} exists and is not empty: give a new folder (the Space is written from scratch).')
    (out / SPACE_MODEL_DIR).mkdir(parents=True)
    (out / SPACE_EXAMPLES_DIR).mkdir()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        shutil.copyfile(checkpoint / name, out / SPACE_MODEL_DIR / name)
    for k, path in enumerate(examples):
        shutil.copyfile(path, out / SPACE_EXAMPLES_DIR / f'{k:02d}_{Path(path).parent.name}_{Path(path).name}')
    architecture = config['architecture']
    title = title or f'{architecture}: what it looks at'
    (out / 'app.py').write_text(
        APP_TEMPLATE.format(
            version=__version__,
            examples=SPACE_EXAMPLES_DIR,
            model=SPACE_MODEL_DIR,
            name=architecture,
            topk=topk,
            title=title,
        )
    )
    (out / 'requirements.txt').write_text(''.join(f'{line}\n' for line in _space_requirements(out)))
    card = SpaceCardData(
        title=title[:60],
        emoji='🔍',
        colorFrom='yellow',
        colorTo='blue',
        sdk='gradio',
        sdk_version=_gradio_version(),
        app_file='app.py',
        pinned=False,
        license=config.get('pretrained_cfg', {}).get('license', 'apache-2.0'),
        models=[config['base_model']] if config.get('base_model') else None,
        tags=['fgvc', 'fgvc_zoo', split_model_name(architecture).head or 'fine-tune', 'image-classification'],
    )
    labels = config.get('label_names') or [str(k) for k in range(config['num_classes'])]
    (out / 'README.md').write_text(
        f'---\n{card.to_yaml()}\n---\n\n# {title}\n\n'
        f'Upload a photo: the page shows the top classes of `{architecture}` ({config["num_classes"]} classes: '
        f'{", ".join(labels[:10])}{", ..." if len(labels) > 10 else ""}) and the maps and boxes the head used.\n\n'
        f'Model arguments: `{json.dumps(config.get("model_args", {}), sort_keys=True)}`.\n\n'
        f'Written by `fgvc-zoo space` (fgvc-zoo {__version__}); run locally with `python app.py`.\n'
    )
    return out
