"""ONNX export: onnxruntime reproduces every head's PyTorch eval forward, and the file carries its preprocessing.

Tiny timm backbones at 64 px for every head; one real architecture per backbone family at its real input size with
random weights (`slow`); and the CLI path `fgvc-zoo export DIR --onnx` against `fgvc-zoo predict` on one image.
"""

import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from requirements_check import require
from torchvision.transforms.v2.functional import gaussian_blur

from fgvc_zoo import export_onnx, read_onnx_metadata
from fgvc_zoo.cli import run
from fgvc_zoo.data import create_transforms
from fgvc_zoo.errors import UsageError
from fgvc_zoo.hub import load_model, save_pretrained
from fgvc_zoo.hub.onnx import DATA_CONFIG_KEYS
from fgvc_zoo.layers import cell_boxes, select_boxes, smooth_maps

ort = require('onnxruntime', 'the ONNX export tests run the exported file (pip install fgvc-zoo[onnx])')
require('onnx', 'the ONNX export writes the metadata with it (pip install fgvc-zoo[onnx])')

TINY_BACKBONES = ('test_resnet', 'test_efficientnet', 'test_convnext', 'test_vit')
HEAD_ARGS = {
    'lfd': dict(zoom_size=32, region_sizes=(0.35, 0.5)),
    'dpnet': dict(),
    'iagn': dict(mid_channels=8, feature_channels=16, hidden_features=16, zoom_size=32),
}
# One real architecture per family, each head on at least one of them, with default head arguments at the backbone's
# own input size; the ViT at the FGVC size 448 with LFD's crops at 224, so both resample its position embedding.
REAL_SIZE = [
    ('lfd', 'resnet18', 224),
    ('iagn', 'convnext_atto', 224),
    ('dpnet', 'tf_efficientnet_lite0', 224),
    ('lfd', 'vit_tiny_patch16_224', 448),
]
LOGITS_ATOL = 1e-4


def _session(path) -> 'ort.InferenceSession':
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _run(session, x: torch.Tensor) -> list[np.ndarray]:
    return session.run(None, {'input': x.numpy()})


@pytest.mark.parametrize('backbone', TINY_BACKBONES)
def test_onnx_logits_match_pytorch_at_any_batch_size(head, backbone, tmp_path):
    model = timm.create_model(head, backbone=backbone, num_classes=3, **HEAD_ARGS.get(head, {}))
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=64, dynamic_batch=True, batch_size=2)
    session = _session(path)
    assert not model.training
    for batch_size in (1, 3):  # neither is the traced batch of 2
        x = torch.randn(batch_size, 3, 64, 64)
        (logits,) = _run(session, x)
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, rtol=0, atol=LOGITS_ATOL)


def test_onnx_explain_outputs_match_the_explanation(head, tmp_path):
    model = timm.create_model(head, backbone='test_resnet', num_classes=3, **HEAD_ARGS.get(head, {})).eval()
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=64, explain=True)
    session = _session(path)
    x = torch.randn(2, 3, 64, 64)
    explanation = model.explain(x)
    expected = {
        'logits': explanation.logits,
        'boxes': explanation.boxes,
        'box_scores': explanation.scores,
        **{f'heatmap_{name}': heatmap for name, heatmap in explanation.heatmaps.items()},
    }
    assert [output.name for output in session.get_outputs()] == list(expected)
    for (name, value), output in zip(expected.items(), _run(session, x), strict=True):
        # Boxes are pixel coordinates up to the input size; everything else is of order 1.
        np.testing.assert_allclose(output, value.numpy(), rtol=1e-4, atol=LOGITS_ATOL, err_msg=name)


def test_onnx_metadata_records_the_preprocessing_and_label_names(tmp_path):
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=3)
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=(64, 80), label_names=['ant', 'bee', 'cat'])
    metadata = read_onnx_metadata(path)
    expected = dict(timm.data.resolve_model_data_config(model), input_size=(3, 64, 80))
    assert {key: metadata[key] for key in DATA_CONFIG_KEYS} == {key: expected[key] for key in DATA_CONFIG_KEYS}
    assert metadata['label_names'] == ['ant', 'bee', 'cat']
    assert metadata['architecture'] == 'dpnet' and metadata['model_args']['backbone'] == 'test_resnet'


def test_onnx_static_batch_fixes_the_input_shape(tmp_path):
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3, **HEAD_ARGS['lfd'])
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=64, dynamic_batch=False, batch_size=4)
    (input_meta,) = _session(path).get_inputs()
    assert input_meta.shape == [4, 3, 64, 64]


class BatchFrozenByTracing(torch.nn.Module):
    """Logits scaled by the batch size as a Python float: the trace freezes the example's batch into the graph."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3))) * float(x.shape[0])


def test_onnx_export_check_catches_a_graph_that_does_not_reproduce_the_model(tmp_path):
    with pytest.raises(ValueError, match='onnxruntime logits differ from PyTorch .* at batch 3'):
        export_onnx(BatchFrozenByTracing(), tmp_path / 'model.onnx', img_size=8, batch_size=2)
    # A fixed batch is what the graph was traced for, and it checks out.
    export_onnx(BatchFrozenByTracing(), tmp_path / 'model.onnx', img_size=8, batch_size=2, dynamic_batch=False)


def test_onnx_export_refuses_an_opset_without_aligned_roi_align(tmp_path):
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3)
    with pytest.raises(ValueError, match='opset >= 16'):
        export_onnx(model, tmp_path / 'model.onnx', img_size=64, opset=15)


def test_onnx_export_refuses_label_names_of_another_length(tmp_path):
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=3)
    with pytest.raises(ValueError, match='2 label_names for a model with num_classes=3'):
        export_onnx(model, tmp_path / 'model.onnx', img_size=64, label_names=['ant', 'bee'])


class SelectBoxes(torch.nn.Module):
    def __init__(self, boxes: torch.Tensor, num: int):
        super().__init__()
        self.boxes, self.num = boxes, num

    def forward(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return select_boxes(self.boxes, scores, self.num, 0.25)


def test_onnx_static_nms_breaks_ties_as_pytorch_does(tmp_path):
    boxes = cell_boxes((4, 4), (128, 128), (0.35, 0.5))
    module = SelectBoxes(boxes, 6)
    path = tmp_path / 'nms.onnx'
    example = torch.rand(2, boxes.shape[0])
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=18,
        input_names=['input'],
        dynamic_axes={'input': {0: 'batch'}},
    )
    session = _session(path)
    for _ in range(10):
        # Few distinct levels, repeated across the two region sizes: ties everywhere.
        scores = (torch.randint(0, 3, (5, 16)).float() / 3).repeat(1, 2)
        selected_boxes, selected_scores = _run(session, scores)
        expected_boxes, expected_scores = module(scores)
        np.testing.assert_array_equal(selected_boxes, expected_boxes.numpy())
        np.testing.assert_array_equal(selected_scores, expected_scores.numpy())


@pytest.mark.parametrize('shape, sigma', [((2, 1, 7, 7), 1.0), ((3, 4, 14, 10), 0.6), ((1, 2, 3, 3), 2.0)])
def test_onnx_traceable_smoothing_is_torchvision_gaussian_blur(shape, sigma):
    maps = torch.randn(shape)
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * min(shape[-2:]) - 1)
    kernel -= 1 - kernel % 2
    torch.testing.assert_close(smooth_maps(maps, sigma), gaussian_blur(maps, [kernel, kernel], [sigma, sigma]))


@pytest.mark.slow
@pytest.mark.parametrize('head, backbone, size', REAL_SIZE)
def test_onnx_logits_match_pytorch_on_real_architectures(head, backbone, size, tmp_path):
    model = timm.create_model(head, backbone=backbone, num_classes=10)
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=size, batch_size=1)
    x = torch.randn(2, 3, size, size)
    (logits,) = _run(_session(path), x)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=LOGITS_ATOL)


def test_onnx_cli_export_reproduces_the_predict_cli(tmp_path, capsys):
    folder = save_pretrained(
        timm.create_model('lfd', backbone='test_resnet', num_classes=3, zoom_size=48),
        tmp_path / 'demo',
        label_names=['ant', 'bee', 'cat'],
    )
    image = tmp_path / 'image.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(image)

    assert run(['export', str(folder), '--onnx', '--img-size', '96']) == 0
    assert (folder / 'model.onnx').is_file() and (folder / 'model.safetensors').is_file()
    capsys.readouterr()
    assert run(['predict', str(image), '--checkpoint', str(folder), '--img-size', '96', '--topk', '3', '--json']) == 0
    (predicted,) = json.loads(capsys.readouterr().out)

    # A runtime without fgvc_zoo's model code: preprocessing from the metadata, then onnxruntime.
    metadata = read_onnx_metadata(folder / 'model.onnx')
    transform = create_transforms({key: metadata[key] for key in DATA_CONFIG_KEYS}, is_training=False)
    x = transform(Image.open(image).convert('RGB'))[None]
    (logits,) = _run(_session(folder / 'model.onnx'), x)
    probabilities = torch.from_numpy(logits).softmax(dim=1)[0]
    for entry in predicted['predictions']:
        assert entry['label'] == metadata['label_names'][entry['index']]
        assert entry['probability'] == pytest.approx(probabilities[entry['index']].item(), abs=1e-5)
    assert [entry['index'] for entry in predicted['predictions']] == probabilities.argsort(descending=True).tolist()
    with torch.no_grad():
        expected = load_model(str(folder))(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=LOGITS_ATOL)


def test_onnx_cli_img_size_needs_onnx(tmp_path):
    with pytest.raises(UsageError, match='add --onnx'):
        run(['export', str(tmp_path), '--img-size', '96'])
