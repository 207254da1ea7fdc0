"""`fgvc-zoo demo` and `fgvc-zoo space`: a page where a person uploads a photo and sees what the head looks at.

The page shows the top-k classes with probabilities and the head's explanation panels, drawn by
`fgvc_zoo.explain.draw_explanation` (the same PNG as `fgvc-zoo explain`), with a legend saying what each panel
means for that head. Models load with `load_from_args`, the code path of `fgvc-zoo predict`, so the page's top-1
is predict's top-1: same weights, same preprocessing from the checkpoint's config, same `predict` function.

Every upload is decoded by `fgvc_zoo.data.load_image` (CMYK, 16-bit, transparent and grayscale files become RGB);
a file it refuses (not an image, truncated, empty, decompression-bomb sized) gets a one-line message in the page
and the server keeps serving. gradio is an optional dependency (`pip install "fgvc-zoo[demo]"`), imported only
when a page is built.

`fgvc-zoo space DIR OUT` writes a folder that runs as a Hugging Face Space (`sdk: gradio`): `app.py` calling
`build_demo`, the model's weights and config, example images, `requirements.txt` pinned to this fgvc-zoo version
and the README front matter the Hub reads; `fgvc-zoo push OUT ORG/NAME --space` uploads it.
"""

import argparse
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
from PIL import Image

__all__ = [
    'DemoModel',
    'DemoAnswer',
    'load_demo_model',
    'answer',
    'build_demo',
    'find_examples',
    'write_space',
    'push_space',
    'add_demo_arguments',
    'demo_main',
    'add_space_arguments',
    'space_main',
]

GRADIO_HINT = 'the demo needs gradio: pip install "fgvc-zoo[demo]"'
IMAGE_HINT = 'upload a photo (JPEG, PNG, WebP, BMP, TIFF or GIF)'
EXAMPLES_PER_MODEL = 6
SPACE_MODEL_DIR = 'model'
SPACE_EXAMPLES_DIR = 'examples'
# What `fgvc-zoo push --space` uploads: the app, its pins and card, the examples, the weights (never a pickle).
SPACE_FILES = ('app.py', 'requirements.txt', 'README.md', f'{SPACE_EXAMPLES_DIR}/*', f'{SPACE_MODEL_DIR}/config.json')
SPACE_WEIGHTS = f'{SPACE_MODEL_DIR}/model.safetensors'


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
    from .evaluate import load_from_args

    args = argparse.Namespace(checkpoint=source, model=None, img_size=img_size, device=device)
    model, transform, names, _ = load_from_args(args)
    return DemoModel(name or source, model, transform, names)


def _legend(head: str, legend: str, panels: Sequence[str]) -> str:
    """The page's legend: what the head's panels mean (its `explanation_legend`), then their titles in order."""
    rows = '\n'.join(f'{k}. {title}' for k, title in enumerate(panels, 1))
    return f'**How to read the panels** ({head})\n\n{legend}\n\nPanels, left to right:\n\n{rows}'


def _render(explained: Any) -> Image.Image:
    """The PNG `draw_explanation` writes, as an image (it draws to a file; the page shows pixels)."""
    from .explain import draw_explanation

    with tempfile.TemporaryDirectory(prefix='fgvc_zoo_demo_') as folder:
        path = draw_explanation(explained, os.path.join(folder, 'explain.png'))
        with Image.open(path) as png:
            return png.convert('RGB')


def answer(demo_model: DemoModel, image_path: str | None, topk: int = 5, name: str | None = None) -> DemoAnswer:
    """Top-k and explanation of one uploaded file (`name`: what to call it, default its file name), or a one-line
    reason it cannot be read."""
    from .data import UnreadableImageError, load_image
    from .explain import explain_images
    from .predict import predict

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
    (explained,) = explain_images(demo_model.model, [image], demo_model.transform, demo_model.label_names)
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


def _import_gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise SystemExit(f'{GRADIO_HINT} ({e}).') from None
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
    gr = _import_gradio()
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
        # One queue for the three triggers, one request at a time: draw_explanation uses pyplot, which is not
        # thread-safe. `input`, not `change`: gradio fires `change` twice when an upload replaces an image.
        run = dict(fn=classify, inputs=[image, checkpoint], outputs=outputs, preprocess=False, concurrency_id='model')
        image.input(**run, api_name='classify')
        checkpoint.change(**run, api_visibility='private')
        if picked is not None:  # clicking an example sets the image without an `input` event
            picked.load_input_event.then(**run, api_visibility='private')
    return page


def find_examples(checkpoint: str, limit: int = EXAMPLES_PER_MODEL) -> list[str]:
    """Example images of a trained folder: the first validation image of each class of its synthetic data."""
    val = Path(checkpoint) / 'synthetic_data' / 'val'
    if not val.is_dir():
        return []
    firsts = [min(folder.iterdir()) for folder in sorted(val.iterdir()) if folder.is_dir() and any(folder.iterdir())]
    return [str(path) for path in firsts[:limit]]


def _checked_examples(examples: Sequence[str]) -> list[str]:
    from .data import check_image

    for path in examples:
        reason = check_image(path)
        if reason is not None:
            raise SystemExit(f'--examples {path}: {reason}. Pass image files.')
    return [str(path) for path in examples]


def _served_folders(examples: Sequence[str]) -> list[str]:
    return sorted({str(Path(path).resolve().parent) for path in examples})


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--checkpoint',
        nargs='+',
        required=True,
        help='one or more trained/exported folders, hf-hub:ORG/NAME or tags; the page switches between them',
    )
    parser.add_argument('--examples', nargs='*', help='example images (default: a few from each synthetic_data/val)')
    parser.add_argument('--img-size', type=int, help="input side; default: each model's data config, like predict")
    parser.add_argument('--topk', type=int, default=5, help='classes shown')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (0.0.0.0 to reach it from others)')
    parser.add_argument('--port', type=int, default=7860, help='port to serve on')
    parser.add_argument(
        '--share',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='also serve through a temporary public gradio.live link (needs internet; off by default)',
    )
    parser.add_argument('--title', help='page title')


def demo_main(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise SystemExit(f'--topk {args.topk}: ask for at least 1 class.')
    _import_gradio()
    models = [load_demo_model(source, args.img_size, args.device) for source in args.checkpoint]
    if args.examples is None:
        examples, seen = [], set()
        for path in [path for source in args.checkpoint for path in find_examples(source)]:
            content = Path(path).read_bytes()  # checkpoints trained on the same synthetic data share images
            if content not in seen:
                seen.add(content)
                examples.append(path)
    else:
        examples = _checked_examples(args.examples)
    page = build_demo(models, examples, topk=args.topk, title=args.title)
    print(f'Serving {", ".join(args.checkpoint)} on http://{args.host}:{args.port} (Ctrl+C stops)', flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=_served_folders(examples))
    return 0


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version('gradio')
    except PackageNotFoundError:
        raise SystemExit(f'{GRADIO_HINT}: the Space README pins the gradio version the app was built with.') from None


def write_space(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    examples: Sequence[str] | None = None,
    title: str | None = None,
    topk: int = 5,
) -> Path:
    """Write a Space folder for the export in `checkpoint`: app.py, model/, examples/, requirements.txt, README."""
    from huggingface_hub import SpaceCardData

    import fgvc_zoo

    from .hub import CONFIG_NAME, WEIGHTS_NAME, _check_local_export

    checkpoint, out = Path(checkpoint), Path(out)
    config = _check_local_export(checkpoint)
    examples = find_examples(str(checkpoint)) if examples is None else _checked_examples(examples)
    if not examples:
        raise SystemExit(
            f'{checkpoint} has no synthetic_data/val to take example images from: pass --examples IMAGE ... '
            f'(a Space shows them under the upload box).'
        )
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f'{out} exists and is not empty: give a new folder (the Space is written from scratch).')
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
            version=fgvc_zoo.__version__,
            examples=SPACE_EXAMPLES_DIR,
            model=SPACE_MODEL_DIR,
            name=architecture,
            topk=topk,
            title=title,
        )
    )
    (out / 'requirements.txt').write_text(f'fgvc-zoo[demo]=={fgvc_zoo.__version__}\n')
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
        tags=['fgvc', 'fgvc_zoo', architecture.split('_')[0], 'image-classification'],
    )
    labels = config.get('label_names') or [str(k) for k in range(config['num_classes'])]
    (out / 'README.md').write_text(
        f'---\n{card.to_yaml()}\n---\n\n# {title}\n\n'
        f'Upload a photo: the page shows the top classes of `{architecture}` ({config["num_classes"]} classes: '
        f'{", ".join(labels[:10])}{", ..." if len(labels) > 10 else ""}) and the maps and boxes the head used.\n\n'
        f'Model arguments: `{json.dumps(config.get("model_args", {}), sort_keys=True)}`.\n\n'
        f'Written by `fgvc-zoo space` (fgvc-zoo {fgvc_zoo.__version__}); run locally with `python app.py`.\n'
    )
    return out


def push_space(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Space `repo_id` (sdk gradio) if needed and upload the folder `write_space` wrote."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    missing = [
        name for name in ('app.py', 'requirements.txt', 'README.md', SPACE_WEIGHTS) if not (folder / name).is_file()
    ]
    if missing:
        raise SystemExit(
            f'{folder} is not a Space folder (no {", ".join(missing)}): write one with `fgvc-zoo space DIR {folder}`.'
        )
    token = token or get_token()
    if not token:
        raise PermissionError(
            f"No Hugging Face token to push '{folder}' to the Space '{repo_id}': pass --token (or token=), set "
            f"HF_TOKEN, or run `hf auth login`. The token needs write access to '{repo_id.split('/')[0]}'."
        )
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='space', space_sdk='gradio')
    api.upload_folder(
        repo_id=repo_id,
        repo_type='space',
        folder_path=folder,
        allow_patterns=[*SPACE_FILES, SPACE_WEIGHTS],
        commit_message='Upload fgvc_zoo demo Space',
    )
    return str(url)


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('dir', help='a trained or exported folder (model.safetensors + config.json)')
    parser.add_argument('out', help='the Space folder to write (new or empty)')
    parser.add_argument('--examples', nargs='*', help='example images (default: a few from DIR/synthetic_data/val)')
    parser.add_argument('--title', help='Space title')
    parser.add_argument('--topk', type=int, default=5, help='classes shown')


def space_main(args: argparse.Namespace) -> int:
    out = write_space(args.dir, args.out, args.examples, title=args.title, topk=args.topk)
    print(
        f'Wrote the Space {out}: try it with `python {out / "app.py"}`, '
        f'push it with `fgvc-zoo push {out} ORG/NAME --space`'
    )
    return 0
