"""Every head compiles with `torch.compile(fullgraph=True)`: one graph with static shapes, in eval and training.

`backend='eager'` runs the captured graph without code generation, so these tests prove that dynamo traces the whole
forward (no graph break) in a few seconds. The recording backend also checks that every tensor in the graph has a
static shape: torchvision's NMS traced too, but as an unbacked (data-dependent) size, which keeps CUDA graphs and a
static ONNX graph away.
"""

import pytest
import timm
import torch

from fgvc_zoo.bench import COMPILE_MIN_TORCH, torch_version

pytestmark = pytest.mark.skipif(
    torch_version() < COMPILE_MIN_TORCH, reason=f'fullgraph compile needs torch>={COMPILE_MIN_TORCH}'
)
TINY_BACKBONES = ('test_resnet', 'test_efficientnet', 'test_convnext', 'test_vit')
# Small enough for a second per compile; LFD with two region sizes gives tied scores across sizes.
HEAD_ARGS = {
    'lfd': dict(zoom_size=32, region_sizes=(0.35, 0.5)),
    'dpnet': dict(),
    'iagn': dict(mid_channels=8, feature_channels=16, hidden_features=16, zoom_size=32),
}


def _model(head: str, backbone: str = 'test_resnet') -> torch.nn.Module:
    return timm.create_model(head, backbone=backbone, num_classes=3, **HEAD_ARGS.get(head, {}))


class RecordingBackend:
    """A dynamo backend that keeps every graph it is given and runs it as is."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward

    def dynamic_shapes(self) -> list[str]:
        """Nodes whose output has a symbolic (e.g. data-dependent) size."""
        found = []
        for graph_module in self.graphs:
            for node in graph_module.graph.nodes:
                values = node.meta.get('example_value')
                for value in values if isinstance(values, (tuple, list)) else [values]:
                    if isinstance(value, torch.Tensor) and not all(isinstance(s, int) for s in value.shape):
                        found.append(f'{node.format_node()}: {tuple(value.shape)}')
        return found


def _compile(model: torch.nn.Module) -> tuple[torch.nn.Module, RecordingBackend]:
    torch._dynamo.reset()
    backend = RecordingBackend()
    return torch.compile(model, fullgraph=True, dynamic=False, backend=backend), backend


@pytest.mark.parametrize('backbone', TINY_BACKBONES)
def test_fullgraph_compile_eval_forward_is_one_static_graph(head, backbone):
    model = _model(head, backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled, backend = _compile(model)
    with torch.no_grad():
        logits = compiled(x)
        expected = model(x)
    assert len(backend.graphs) == 1
    assert backend.dynamic_shapes() == []
    torch.testing.assert_close(logits, expected)


def test_fullgraph_compile_every_train_step_and_its_backward(head):
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    for step in range(_model(head).num_train_steps):
        # Two copies of one state: a train step moves BatchNorm statistics, which IAGN's attention reads.
        torch.manual_seed(0)
        model = _model(head).train()
        torch.manual_seed(0)
        reference = _model(head).train()
        compiled, backend = _compile(model)
        torch.manual_seed(step)  # IAGN's jigsaw draws permutations: the same ones in both runs
        output = compiled(x, target=y, step=step)
        output.loss.backward()
        torch.manual_seed(step)
        expected = reference(x, target=y, step=step)
        expected.loss.backward()
        assert len(backend.graphs) == 1, f'step {step}: {len(backend.graphs)} graphs'
        assert backend.dynamic_shapes() == [], f'step {step}'
        torch.testing.assert_close(output.loss, expected.loss)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        expected_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
        assert grads.keys() == expected_grads.keys() and grads, f'step {step}: not the same parameters get gradients'
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, msg=f'step {step}: gradient of {name}')
