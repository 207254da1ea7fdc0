"""What each head really uses, drawn over the ORIGINAL image.

A head's `explain(x)` gives maps and boxes in the pixels of its input, which the eval transform made by resizing
and centre-cropping the original. `view_geometry` reads that transform and maps input pixels back into the
original, so boxes land on what the model looked at and maps cover exactly the region of the original the model
saw, whatever the resize or crop. `explain_images` returns that geometry without any drawing (tests check it);
`draw_explanation` renders one PNG whose image panels are the original at a fixed scale.

By default the model explains the whole original (`view='full'`: the eval transform without its centre crop, the
shorter side at the crop's size), so that every pixel of the picture has a map value; `view='crop'` explains exactly
what `eval`/`predict` see and dims the border the crop cuts away. Titles, box labels and the caption sit in strips
outside the image (a label inside a picture can always collide with a box or another label): each box carries a
small number, placed where it overlaps nothing, and the strip under the panel lists number, colour and text.
Maps use a perceptual colour map (inferno) whose opacity grows with the value, so low values show the photo.

What is drawn is what the head declares: its `explanation_panels` (titled maps and boxes in input pixels, which this
module maps to the original and draws) and its optional `explanation_chart` (a bar chart after the panels, e.g.
DP-Net's class-level part participation). No head is named here.
"""

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision import transforms as T

from ..errors import UsageError
from ..layers.cam import min_max_scale
from ..models import ExplanationChart, ExplanationPanel, model_head_name

__all__ = [
    'ViewGeometry',
    'view_geometry',
    'Panel',
    'ImageExplanation',
    'VIEWS',
    'full_view_transform',
    'explain_images',
    'explanation_figure',
    'draw_explanation',
    'FORMATS',
    'output_paths',
]

# Steps of an eval transform that do not move pixels (tensor conversion, normalisation).
_PIXEL_WISE = (
    'ToTensor',
    'MaybeToTensor',
    'PILToTensor',
    'MaybePILToTensor',
    'Normalize',
    'ConvertImageDtype',
    'ToImage',
    'ToDtype',
)
FORMATS = ('png', 'pdf', 'svg')  # what `draw_explanation` writes
PANEL_MIN, PANEL_MAX = 256, 1024  # longest side of an image panel in the PNG, in pixels
DPI = 100
BOX_COLOURS = ('#ffdd00', '#00e5ff', '#ff4fd8', '#7cff4f', '#ff8c1a', '#b38cff')
HEATMAP_CMAP = 'inferno'  # perceptually uniform, readable in greyscale
VIEWS = ('full', 'crop')
# Text metrics at DPI 100 (DejaVu Sans): line heights in PNG pixels and an upper bound of a character's width.
TITLE_PT, LABEL_PT, CAPTION_PT = 9, 8, 10
_LINE = {TITLE_PT: 15, LABEL_PT: 14, CAPTION_PT: 17}
_CHAR = {TITLE_PT: 7.6, LABEL_PT: 6.8, CAPTION_PT: 8.4}
_PAD = 6


@dataclass
class ViewGeometry:
    """Where the model's input sits in the original image: original = (input + offset) / scale, per axis."""

    original_size: tuple[int, int]  # (W, H) of the original image
    input_size: tuple[int, int]  # (w, h) of the model's input
    scale: tuple[float, float] = (1.0, 1.0)  # resize factors (x, y)
    offset: tuple[float, float] = (0.0, 0.0)  # crop offset in resized pixels (x, y); negative where padded

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy boxes in input pixels -> original-image pixels."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array(self.scale * 2)[[0, 1, 0, 1]]
        offset = np.array(self.offset * 2)[[0, 1, 0, 1]]
        return (boxes + offset) / scale

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """The region of the original the model saw, (x1, y1, x2, y2) in original pixels: where maps are drawn."""
        return tuple(float(v) for v in self.to_original([0, 0, *self.input_size])[0])


def _resized_size(resize: T.Resize, width: int, height: int) -> tuple[int, int]:
    """Output (w, h) of torchvision's Resize, by its documented rule (shorter side to `size`, long side truncated)."""
    size = resize.size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    size = size[0] if isinstance(size, (list, tuple)) else size
    short, long = sorted((width, height))
    new_short, new_long = size, int(size * long / short)
    if resize.max_size is not None and new_long > resize.max_size:
        new_short, new_long = int(resize.max_size * new_short / new_long), resize.max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def view_geometry(transform: Callable, original_size: tuple[int, int]) -> ViewGeometry:
    """The geometry of an eval transform (timm's Resize + CenterCrop, or any chain of them) on a (W, H) image.

    torchvision has no inverse of its geometric transforms, so the two used by timm's eval transform are
    replayed here; any other geometric step is refused rather than guessed.
    """
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    width, height = original_size
    scale_x, scale_y, offset_x, offset_y = 1.0, 1.0, 0.0, 0.0
    for step in steps:
        name = type(step).__name__
        if isinstance(step, T.Resize):
            new_w, new_h = _resized_size(step, width, height)
            scale_x, scale_y = scale_x * new_w / width, scale_y * new_h / height
            offset_x, offset_y = offset_x * new_w / width, offset_y * new_h / height
            width, height = new_w, new_h
        elif isinstance(step, T.CenterCrop):
            crop_h, crop_w = step.size
            # torchvision cuts int(round((size - crop) / 2)) off the left/top, or pads (crop - size) // 2 there
            left = int(round((width - crop_w) / 2.0)) if width >= crop_w else -((crop_w - width) // 2)
            top = int(round((height - crop_h) / 2.0)) if height >= crop_h else -((crop_h - height) // 2)
            offset_x, offset_y = offset_x + left, offset_y + top
            width, height = crop_w, crop_h
        elif name not in _PIXEL_WISE:
            raise ValueError(
                f'view_geometry cannot map boxes back through {name}: explain supports eval transforms '
                f'made of Resize and CenterCrop (timm crop_mode "center" or "squash").'
            )
    return ViewGeometry(tuple(original_size), (width, height), (scale_x, scale_y), (offset_x, offset_y))


@dataclass
class Panel:
    """One picture of the PNG: a map over the seen region (input-pixel array, or None) and boxes (original px)."""

    title: str
    heatmap: np.ndarray | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_labels: list[str] = field(default_factory=list)
    first_box: int = 0  # number (and colour) of the first box, so that a box keeps them across panels


@dataclass
class ImageExplanation:
    """Everything `draw_explanation` draws for one image, in original-image pixels."""

    image: Image.Image
    geometry: ViewGeometry
    head: str
    label: str
    probability: float
    panels: list[Panel]
    chart: ExplanationChart | None = None  # the head's bar chart after the panels (DP-Net: part participation)
    legend: str = ''  # what the head's panels mean (the head's `explanation_legend`)

    @property
    def map_extent(self) -> tuple[float, float, float, float]:
        return self.geometry.extent

    @property
    def panel_scale(self) -> float:
        """PNG pixels per original pixel: the original's longest side is drawn with PANEL_MIN..PANEL_MAX pixels."""
        longest = max(self.image.size)
        return min(max(1.0, PANEL_MIN / longest), PANEL_MAX / longest)

    @property
    def panel_size(self) -> tuple[int, int]:
        return tuple(round(side * self.panel_scale) for side in self.image.size)

    @property
    def num_columns(self) -> int:
        return len(self.panels) + (self.chart is not None)

    @property
    def layout(self) -> dict[str, int]:
        """Pixel heights of the PNG's rows: caption, titles (wrapped to the panel width), image, box legends."""
        width, height = self.panel_size
        titles = [panel.title for panel in self.panels]
        if self.chart is not None:
            titles.append(self.chart.title)
        title_lines = max(len(_wrap(t, width, TITLE_PT)) for t in titles)
        legend_rows = max((_legend_rows(panel, width) for panel in self.panels), default=0)
        has_map = any(panel.heatmap is not None for panel in self.panels)
        return dict(
            caption=_LINE[CAPTION_PT] + 2 * _PAD,
            title=title_lines * _LINE[TITLE_PT] + _PAD,
            image=height,
            legend=legend_rows * _LINE[LABEL_PT] + (_LINE[LABEL_PT] + 4 if has_map else 0) + _PAD,
        )

    @property
    def png_size(self) -> tuple[int, int]:
        """(width, height) of the PNG: the columns side by side (image panels, the head's chart), each
        an image panel of `panel_size` with its title above and its box legend below, under one caption row."""
        return self.panel_size[0] * self.num_columns, sum(self.layout.values())


def _panel(spec: ExplanationPanel, geometry: ViewGeometry) -> Panel:
    """A head's panel (input pixels) in the original's pixels: boxes mapped back, the map as an array."""
    heatmap = None if spec.heatmap is None else spec.heatmap.float().cpu().numpy()
    boxes = geometry.to_original(spec.boxes.float().cpu().numpy())
    return Panel(spec.title, heatmap, boxes, list(spec.box_labels), spec.first_box)


def _chart(spec: ExplanationChart | None) -> ExplanationChart | None:
    if spec is None:
        return None
    values = spec.values.float().cpu().numpy() if hasattr(spec.values, 'cpu') else np.asarray(spec.values)
    return ExplanationChart(spec.title, list(spec.names), values, list(spec.highlight))


def full_view_transform(transform: Callable) -> Callable:
    """The eval transform without its centre crop: the shorter side is resized to the crop's size instead (for a
    squash resize, the whole image to the crop's size), so that the model sees, and explains, the whole image."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    crops = [step for step in steps if isinstance(step, T.CenterCrop)]
    if not crops:
        return transform
    crop_h, crop_w = crops[-1].size
    full = []
    for step in steps:
        if isinstance(step, T.CenterCrop):
            continue
        if isinstance(step, T.Resize):
            squash = isinstance(step.size, (list, tuple)) and len(step.size) == 2
            size = (crop_h, crop_w) if squash else min(crop_h, crop_w)
            step = T.Resize(size, interpolation=step.interpolation, antialias=step.antialias)
        full.append(step)
    return T.Compose(full)


@torch.no_grad()
def explain_images(
    model: nn.Module,
    images: Sequence[Image.Image],
    transform: Callable,
    label_names: Sequence[str] | None = None,
    view: str = 'full',
) -> list[ImageExplanation]:
    """Run `model.explain` on RGB `images`; maps and boxes mapped to original pixels.

    `view='full'`: through `full_view_transform(transform)`, the whole image (one image at a time: sizes differ);
    `view='crop'`: through the eval `transform` itself, what `eval` and `predict` see.
    """
    if view not in VIEWS:
        raise ValueError(f"view='{view}' is not one of {VIEWS}.")
    if view == 'full':
        full = full_view_transform(transform)
        return [e for image in images for e in explain_images(model, [image], full, label_names, 'crop')]
    head = model_head_name(model)
    if head is None:
        raise TypeError(
            f'{type(model).__name__} is not an fgvc_zoo head: explain draws registered heads (their explain() and '
            f'explanation_panels() say what they use).'
        )
    model.eval()
    device = next(model.parameters()).device
    x = torch.stack([transform(image) for image in images]).to(device)
    exp = model.explain(x)
    probs = exp.logits.float().softmax(dim=1)
    names = list(label_names) if label_names is not None else [str(k) for k in range(exp.logits.shape[1])]
    explained = []
    for i, image in enumerate(images):
        geometry = view_geometry(transform, image.size)
        if geometry.input_size != (x.shape[-1], x.shape[-2]):
            raise RuntimeError(
                f'view_geometry found a {geometry.input_size} input but the transform gave '
                f'{tuple(x.shape[-2:])[::-1]}: the transform is not the Resize + CenterCrop it reads.'
            )
        label_index = int(exp.labels[i])
        label = names[label_index]
        panels = [_panel(spec, geometry) for spec in model.explanation_panels(exp, i, label)]
        chart = _chart(model.explanation_chart(exp, i, label))
        explained.append(
            ImageExplanation(
                image, geometry, head, label, float(probs[i, label_index]), panels, chart, model.explanation_legend
            )
        )
    return explained


def _wrap(text: str, width_px: float, size: int) -> list[str]:
    return textwrap.wrap(text, max(8, int((width_px - 2 * _PAD) / _CHAR[size]))) or ['']


def _legend_columns(panel: Panel, width_px: float) -> int:
    longest = max((len(text) for text in panel.box_labels), default=0)
    entry = (longest + 4) * _CHAR[LABEL_PT] + 24  # swatch, number, text, gap
    return max(1, min(len(panel.box_labels), int((width_px - 2 * _PAD) // entry)))


def _legend_rows(panel: Panel, width_px: float) -> int:
    return math.ceil(len(panel.box_labels) / _legend_columns(panel, width_px)) if panel.box_labels else 0


def _text(fig, x: float, y: float, text: str, size: int, **kwargs):
    """Text whose top-left corner is at (x, y) in PNG pixels from the top-left corner."""
    return fig.text(x / fig.bbox.width, 1 - y / fig.bbox.height, text, fontsize=size, va='top', ha='left', **kwargs)


def _titles(fig, title: str, left: float, top: float, width: float) -> None:
    for line, text in enumerate(_wrap(title, width, TITLE_PT)):
        _text(fig, left + _PAD, top + _PAD / 2 + line * _LINE[TITLE_PT], text, TITLE_PT)


def _pixel_axes(fig, x: float, y: float, w: float, h: float):
    """Axes at (x, y, w, h) in PNG pixels from the top-left corner."""
    width, height = fig.get_size_inches() * DPI
    return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))


def _place_tag(ax, renderer, box: np.ndarray, text: str, colour: str, placed: list, bounds) -> None:
    """Draw `text` at the first corner of `box` (inside first, then outside) where it overlaps no earlier tag and
    stays inside the panel; where none is free it is left out (the box keeps its colour, the legend its text)."""
    x1, y1, x2, y2 = box
    candidates = [
        (x1, y1, 'left', 'top'), (x2, y1, 'right', 'top'), (x1, y2, 'left', 'bottom'), (x2, y2, 'right', 'bottom'),
        (x1, y1, 'left', 'bottom'), (x1, y2, 'left', 'top'), (x2, y1, 'right', 'bottom'), (x2, y2, 'right', 'top'),
    ]  # fmt: skip
    for x, y, ha, va in candidates:
        style = dict(
            fontsize=LABEL_PT, color='black', fontweight='bold', bbox=dict(fc=colour, alpha=0.9, pad=1.5, lw=0)
        )
        tag = ax.text(x, y, text, ha=ha, va=va, **style)
        extent = tag.get_window_extent(renderer).expanded(1.0, 1.0)
        inside = bounds.x0 <= extent.x0 and extent.x1 <= bounds.x1 and bounds.y0 <= extent.y0 and extent.y1 <= bounds.y1
        if inside and not any(extent.overlaps(other) for other in placed):
            placed.append(extent)
            return
        tag.remove()


def _draw_image_panel(fig, renderer, explained: ImageExplanation, panel: Panel, left: float) -> None:
    import matplotlib
    import matplotlib.patches as patches

    rows = explained.layout
    width, height = explained.image.size
    panel_w, panel_h = explained.panel_size
    top = rows['caption'] + rows['title']
    ax = _pixel_axes(fig, left, top, panel_w, panel_h)
    ax.imshow(np.asarray(explained.image), extent=(0, width, height, 0), interpolation='bilinear')
    x1, y1, x2, y2 = explained.map_extent
    if panel.heatmap is not None:
        heat = min_max_scale(torch.from_numpy(panel.heatmap).double()).numpy()
        rgba = matplotlib.colormaps[HEATMAP_CMAP](heat)
        rgba[..., 3] = 0.25 + 0.5 * heat  # the photo shows through where the map is low
        ax.imshow(rgba, extent=(x1, x2, y2, y1), interpolation='bilinear')
    if (x1, y1, x2, y2) != (0, 0, width, height):  # the crop view: dim what the model did not see, outline the rest
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec='white', ls='--'))
        for rect in (
            (0, 0, width, y1),
            (0, y2, width, height - y2),
            (0, y1, x1, y2 - y1),
            (x2, y1, width - x2, y2 - y1),
        ):
            ax.add_patch(patches.Rectangle(rect[:2], rect[2], rect[3], fc='black', alpha=0.55, lw=0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    placed: list = []
    bounds = ax.get_window_extent(renderer)
    for k, box in enumerate(panel.boxes, panel.first_box):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, lw=2, ec=colour))
        _place_tag(ax, renderer, box, str(k + 1), colour, placed, bounds)
    # title above, legend below: outside the picture, so nothing in it is ever covered
    _titles(fig, panel.title, left, rows['caption'], panel_w)
    columns = _legend_columns(panel, panel_w)
    column_w = (panel_w - 2 * _PAD) / columns
    legend_top = top + panel_h + _PAD / 2
    for index, text in enumerate(panel.box_labels):
        row, column = divmod(index, columns)
        k = index + panel.first_box
        x = left + _PAD + column * column_w
        y = legend_top + row * _LINE[LABEL_PT]
        swatch = dict(facecolor=BOX_COLOURS[k % len(BOX_COLOURS)], pad=1, lw=0)
        _text(fig, x, y, f' {k + 1} ', LABEL_PT, fontweight='bold', bbox=swatch)
        _text(fig, x + 22, y, text, LABEL_PT)
    if panel.heatmap is not None:
        y = legend_top + _legend_rows(panel, panel_w) * _LINE[LABEL_PT] + 2
        bar_w = min(120, panel_w - 2 * _PAD - 200)
        bar = _pixel_axes(fig, left + _PAD + 30, y + 2, bar_w, 9)
        bar.imshow(np.linspace(0, 1, 256)[None], aspect='auto', cmap=HEATMAP_CMAP)
        bar.set_axis_off()
        _text(fig, left + _PAD, y, 'low', LABEL_PT)
        _text(fig, left + _PAD + 34 + bar_w, y, 'high (map min-max)', LABEL_PT)


def explanation_figure(explained: ImageExplanation):
    """The matplotlib figure of `draw_explanation`, `explained.png_size` pixels at DPI (tests inspect its texts); a
    Figure of its own with an Agg canvas, so no pyplot state and the caller's backend untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    png_width, png_height = explained.png_size
    panel_width = explained.panel_size[0]
    fig = Figure(figsize=(png_width / DPI, png_height / DPI), dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()
    for k, panel in enumerate(explained.panels):
        _draw_image_panel(fig, renderer, explained, panel, k * panel_width)
    if explained.chart is not None:
        _draw_chart(fig, explained, len(explained.panels) * panel_width)
    view = 'whole image' if explained.map_extent == (0, 0, *explained.image.size) else 'eval centre crop (dimmed: cut)'
    caption = f'{explained.head}: {explained.label} ({explained.probability:.1%})  |  view: {view}'
    _text(fig, _PAD, _PAD, _wrap(caption, png_width, CAPTION_PT)[0], CAPTION_PT, fontweight='bold')
    return fig


def draw_explanation(explained: ImageExplanation, path: str, fmt: str = 'png', dpi: int = DPI) -> str:
    """One figure of `explained.png_size` points at 100 per inch: each image panel is the whole original.

    `fmt='png'` rasters it at `dpi` (200: twice the pixels of the default 100, so a large original keeps its detail);
    'pdf' and 'svg' are vector figures (text, boxes and bars stay sharp) in which the photo and the maps are embedded
    unresampled, at the original's own resolution, for a paper."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt='{fmt}' is not one of {FORMATS}.")
    fig = explanation_figure(explained)
    if fmt != 'png':
        for ax in fig.axes:
            for image in ax.get_images():
                image.set_interpolation('none')  # vector backends then embed the array itself, not a resampling
    fig.savefig(path, dpi=dpi, format=fmt)
    return path


def _draw_chart(fig, explained: ImageExplanation, left: float, most: int = 20) -> None:
    """The head's bar chart (e.g. DP-Net's V[pred], its part participation): the `most` bars of largest |value|,
    the highlighted ones in red."""
    from matplotlib.ticker import MaxNLocator

    chart = explained.chart
    names, values, top = chart.names, chart.values, chart.highlight
    rows = explained.layout
    panel_w, panel_h = explained.panel_size
    _titles(fig, chart.title, left, rows['caption'], panel_w)
    shown = np.argsort(-np.abs(values), kind='stable')[:most]
    longest = max(len(names[p]) for p in shown)
    margin = longest * _CHAR[LABEL_PT] + 12  # the y tick labels
    ax = _pixel_axes(fig, left + margin, rows['caption'] + rows['title'] + 4, panel_w - margin - 32, panel_h - 28)
    colours = ['tab:red' if p in top else 'tab:gray' for p in shown]
    ax.barh(range(len(shown)), values[shown], color=colours)
    ax.set_yticks(range(len(shown)), [names[p] for p in shown], fontsize=LABEL_PT if len(shown) <= 12 else 6)
    ax.invert_yaxis()
    ax.axvline(0, color='black', lw=0.5)
    ax.tick_params(axis='x', labelsize=LABEL_PT)
    ax.xaxis.set_major_locator(MaxNLocator(4))


def output_paths(images: Sequence[str], out: str, fmt: str = 'png') -> list[Path]:
    if out.lower().endswith(tuple(f'.{f}' for f in FORMATS)):
        if not out.lower().endswith(f'.{fmt}'):
            raise UsageError(f'--out {out} is not a .{fmt} file, the --format asked for: name it .{fmt}, or a folder.')
        if len(images) != 1:
            raise UsageError(f'--out {out} is a single file but {len(images)} images were given: pass a folder.')
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return [Path(out)]
    Path(out).mkdir(parents=True, exist_ok=True)
    stems = [Path(image).stem for image in images]
    if len(set(stems)) != len(stems):  # dataset layouts reuse file names across class folders
        stems = [f'{Path(image).parent.name}_{Path(image).stem}' for image in images]
    if len(set(stems)) != len(stems):
        raise UsageError('Two images share a folder and file name; their PNGs would overwrite each other. Rename one.')
    return [Path(out) / f'{stem}_explain.{fmt}' for stem in stems]
