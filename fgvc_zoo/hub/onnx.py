"""ONNX export of a head's eval forward, with the preprocessing it expects recorded in the file.

Every head runs with static shapes (region selection is a fixed number of NMS rounds, IAGN's box a min/max over
masked coordinates), so the TorchScript exporter traces the whole forward, `roi_align` included (ONNX `RoiAlign`,
whose `aligned` mode needs opset 16). The file's `metadata_props` hold timm's data config (input size,
interpolation, mean, std, crop_pct, crop_mode) and the class names as JSON strings, so a runtime without fgvc_zoo
can preprocess images exactly as `fgvc-zoo predict` does: `read_onnx_metadata` reads them back.

Needs the `onnx` extra: `pip install fgvc-zoo[onnx]` (onnx to write the metadata, onnxruntime to run the file).
"""

import inspect
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ['export_onnx', 'read_onnx_metadata', 'ONNX_NAME', 'DATA_CONFIG_KEYS']

ONNX_NAME = 'model.onnx'
DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (roi_align's aligned=True) came with opset 16
CHECK_ATOL = 1e-4  # logits, float32
ANTIALIAS_OPSET = 18  # Resize's antialias (a ViT's position embedding resampled to another input size)


class _ExplainOutputs(nn.Module):
    """The eval forward with the explanation as extra outputs: logits, boxes, box scores, then every heatmap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        explanation = self.model.explain(x)
        return explanation.logits, explanation.boxes, explanation.scores, *explanation.heatmaps.values()


def _antialiased_bicubic(g, input, output_size, align_corners, scale_factors):
    """ONNX symbolic of `aten::_upsample_bicubic2d_aa` (opset 18 Resize with antialias), which torch lacks.

    timm resamples a ViT's position embedding this way when the input is not its native size (`dynamic_img_size`,
    e.g. LFD's crops). Resize's antialiased cubic with a = -0.5 and `exclude_outside` is PyTorch's (and PIL's) filter.
    """
    int64 = torch.onnx.TensorProtoDataType.INT64
    batch_channels = g.op(
        'Slice',
        g.op('Shape', input),
        g.op('Constant', value_t=torch.tensor([0])),
        g.op('Constant', value_t=torch.tensor([2])),
    )
    sizes = g.op('Concat', batch_channels, g.op('Cast', output_size, to_i=int64), axis_i=0)
    empty = g.op('Constant', value_t=torch.tensor([], dtype=torch.float32))
    return g.op(
        'Resize',
        input,
        empty,
        empty,
        sizes,
        mode_s='cubic',
        antialias_i=1,
        cubic_coeff_a_f=-0.5,
        exclude_outside_i=1,
        coordinate_transformation_mode_s='half_pixel',
    )


def _import_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            'ONNX export needs the onnx package: `pip install fgvc-zoo[onnx]` (or `pip install onnx`).'
        ) from e
    return onnx


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | Sequence[int] | None = None,
    dynamic_batch: bool = True,
    batch_size: int = 2,
    explain: bool = False,
    label_names: Sequence[str] | None = None,
    opset: int = 18,
    check: bool = True,
) -> Path:
    """Write the eval forward of `model` to an ONNX file at `path`, with its preprocessing in the metadata.

    Args:
        model: an fgvc_zoo head (or any timm model); exported in eval mode and left in eval mode.
        path: the .onnx file to write.
        img_size: input side (or (H, W)); None takes the model's data config (448 for an untrained head, the
            training size for an export folder). LFD's candidate boxes are fixed by the input size, so the graph
            is exported for this one size.
        dynamic_batch: leave the batch dimension free; False fixes it to `batch_size`.
        batch_size: batch of the example input the graph is traced with.
        explain: also output the explanation (boxes, box scores and every heatmap of `model.explain`).
        label_names: class names for the metadata; None takes the model's pretrained cfg's, if it has any.
        opset: ONNX opset, at least 16; a ViT-like backbone at another than its native size needs 18.
        check: run the written file with onnxruntime on the example input (and on one more image when the batch is
            dynamic) and raise if its logits differ from PyTorch's by more than `CHECK_ATOL`.

    Returns the path. The input is `input` (B, C, H, W), normalised as the metadata says; the outputs are `logits`
    (B, num_classes), then with `explain=True` `boxes` (B, N, 4) xyxy input pixels, `box_scores` (B, N) and
    `heatmap_<name>` (B, K, H, W).
    """
    onnx = _import_onnx()
    from timm.data import resolve_model_data_config

    if opset < MIN_OPSET:
        raise ValueError(f'opset={opset}: the heads need opset >= {MIN_OPSET} (RoiAlign with aligned coordinates).')
    if opset >= ANTIALIAS_OPSET:
        torch.onnx.register_custom_op_symbolic('aten::_upsample_bicubic2d_aa', _antialiased_bicubic, ANTIALIAS_OPSET)
    data_config = dict(resolve_model_data_config(model))
    if img_size is not None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        data_config['input_size'] = (data_config['input_size'][0], height, width)
    if label_names is None:
        label_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    num_classes = getattr(model, 'num_classes', None)
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f'{len(label_names)} label_names for a model with num_classes={num_classes}.')

    model.eval()
    parameter = next(model.parameters())
    example = torch.randn(batch_size, *data_config['input_size'], device=parameter.device, dtype=parameter.dtype)
    module = _ExplainOutputs(model).eval() if explain else model  # export restores the mode it finds
    output_names = ['logits']
    if explain:
        with torch.no_grad():
            heatmaps = model.explain(example[:1]).heatmaps
        output_names += ['boxes', 'box_scores', *(f'heatmap_{name}' for name in heatmaps)]
    dynamic_axes = {name: {0: 'batch'} for name in ['input', *output_names]} if dynamic_batch else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Expected: the legacy exporter's deprecation notice (it is the one that takes roi_align), and tracer notes
        # that sizes become constants (the graph is for one input size; `check` runs another batch size).
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='You are using the legacy TorchScript-based ONNX export')
        warnings.filterwarnings('ignore', category=UserWarning, module=r'torch\.onnx')  # constant folding notes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            # torch >= 2.5 has the dynamo exporter and takes dynamo=False for the TorchScript one, 2.4's only exporter.
            **({'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}),
            opset_version=opset,
            input_names=['input'],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )

    proto = onnx.load(str(path))
    metadata = {key: json.dumps(data_config[key]) for key in DATA_CONFIG_KEYS if key in data_config}
    metadata['label_names'] = json.dumps(list(label_names) if label_names is not None else None)
    metadata['architecture'] = json.dumps(getattr(model, 'pretrained_cfg', {}).get('architecture'))
    metadata['model_args'] = json.dumps(getattr(model, 'model_args', None), default=str)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = 'fgvc_zoo'
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    if check:
        check_batch = [example, example[:1].repeat(batch_size + 1, 1, 1, 1)] if dynamic_batch else [example]
        _check_logits(model, path, check_batch)
    return path


def _check_logits(model: nn.Module, path: Path, inputs: Sequence[torch.Tensor]) -> None:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f'Checking {path} needs onnxruntime: `pip install fgvc-zoo[onnx]`, or pass check=False.'
        ) from e
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for x in inputs:
        with torch.no_grad():
            expected = model(x).float().cpu().numpy()
        logits = session.run(None, {'input': x.cpu().numpy()})[0]
        difference = float(abs(logits - expected).max())
        if not difference <= CHECK_ATOL:
            raise ValueError(
                f'{path}: onnxruntime logits differ from PyTorch by {difference:.2e} (> {CHECK_ATOL}) at batch '
                f'{len(x)}. The graph does not reproduce the model; please report it with the model name.'
            )


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata `export_onnx` wrote: the data config keys, label_names, architecture and model_args.

    `timm.data.create_transform(**{k: meta[k] for k in DATA_CONFIG_KEYS})` rebuilds the eval preprocessing.
    """
    onnx = _import_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    metadata = {}
    for prop in proto.metadata_props:
        value = json.loads(prop.value)
        metadata[prop.key] = tuple(value) if prop.key in ('input_size', 'mean', 'std') else value
    missing = [key for key in DATA_CONFIG_KEYS if key not in metadata]
    if missing:
        raise ValueError(f'{path} has no {", ".join(missing)} in its metadata: it was not written by export_onnx.')
    return metadata
