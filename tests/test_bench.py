"""`fgvc-zoo bench`: the ratio arithmetic, the interleaving, the backbone passes each head is charged against, and
that the command runs end to end on a tiny setting. No timing is asserted: timings belong in benchmarks/RESULTS.md.
"""

import dataclasses
import json

import pytest
import torch

from fgvc_zoo import bench
from fgvc_zoo.bench import (
    BenchConfig,
    BenchGrid,
    backbone_passes,
    bench_head,
    bench_in_grid,
    build_model,
    format_table,
    grid_configs,
    inference_fns,
    interleaved_times,
    median_ratio,
    train_fns,
    train_peak_memory,
)
from fgvc_zoo.cli import run
from fgvc_zoo.errors import UsageError
from fgvc_zoo.models import list_heads

TINY = {
    'lfd': dict(zoom_size=32, region_sizes=(0.35, 0.5), num_regions=6, num_hybrid_regions=4),
    'dpnet': dict(),
    'iagn': dict(mid_channels=8, feature_channels=16, hidden_features=8, zoom_size=48),
}
TINY_ARGS = 'lfd:zoom_size=24,region_sizes=[0.35,0.5];iagn:mid_channels=8,feature_channels=16,hidden_features=8'


def _config(head: str, **kwargs) -> BenchConfig:
    return BenchConfig(
        head=head,
        backbone='test_resnet',
        img_size=64,
        batch_size=2,
        num_classes=3,
        head_args=TINY.get(head, {}),
        **kwargs,
    )


def test_median_ratio_is_the_median_of_per_pair_ratios_not_the_ratio_of_medians():
    # pairs: 2/1 = 2.0, 3/2 = 1.5, 10/4 = 2.5 -> median 2.0; the ratio of the medians would be 3/2 = 1.5
    assert median_ratio([2.0, 3.0, 10.0], [1.0, 2.0, 4.0]) == pytest.approx(2.0)
    # an even count averages the two middle ratios: 1.0, 1.2, 1.4, 3.0 -> 1.3
    assert median_ratio([1.0, 1.2, 1.4, 3.0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.3)


def test_median_ratio_refuses_unpaired_timings():
    with pytest.raises(ValueError, match='as many head as backbone'):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match='at least one'):
        median_ratio([], [])


def test_repetitions_alternate_head_and_backbone_after_the_warmup_and_time_each_call(monkeypatch):
    calls, now = [], [0.0]

    def call(name: str, seconds: float):
        calls.append(name)
        now[0] += seconds

    monkeypatch.setitem(bench.CLOCKS, 'wall', lambda: now[0])
    head_times, base_times = interleaved_times(lambda: call('A', 3.0), lambda: call('B', 1.0), reps=3, warmup=2)
    assert calls == ['A', 'B'] * 5  # 2 untimed warm-up pairs, then 3 timed pairs
    assert (head_times, base_times) == ([3.0] * 3, [1.0] * 3)


def test_lfd_is_charged_the_image_pass_and_l_crops_at_inference_and_m_crops_in_training():
    cfg = _config('lfd')
    model = build_model(cfg)
    (infer,) = backbone_passes(model, cfg, train=False)
    assert [(tuple(x.shape), grad) for x, grad, _ in infer] == [((2, 3, 64, 64), False), ((2 * 4, 3, 32, 32), False)]
    (train,) = backbone_passes(model, cfg, train=True)
    assert [(tuple(x.shape), grad) for x, grad, _ in train] == [((2, 3, 64, 64), True), ((2 * 6, 3, 32, 32), True)]


def test_frozen_dpnet_is_charged_one_gradient_free_pass():
    cfg = _config('dpnet')
    model = build_model(cfg)
    assert [[(tuple(x.shape), grad) for x, grad, _ in step] for step in backbone_passes(model, cfg, train=True)] == [
        [((2, 3, 64, 64), False)]
    ]


def test_progressive_iagn_is_charged_its_s_plus_one_steps():
    cfg = _config('iagn')
    model = build_model(cfg)
    (infer,) = backbone_passes(model, cfg, train=False)
    assert [tuple(x.shape) for x, _, _ in infer] == [(2, 3, 64, 64), (2, 3, 48, 48)]
    steps = backbone_passes(model, cfg, train=True)
    assert len(steps) == model.num_stages + 1 == model.num_train_steps
    # stage step k: a grad-free pass for the box, then a trained pass on the zoomed jigsaw whose loss reads map k
    assert [[(grad, stage) for _, grad, stage in step] for step in steps[:-1]] == [
        [(False, None), (True, k)] for k in range(model.num_stages)
    ]
    # the fused step trains through every map of both passes
    assert [(grad, stage) for _, grad, stage in steps[-1]] == [(True, None), (True, None)]


def test_bench_head_reports_the_median_timings_and_the_median_of_per_pair_ratios(head, monkeypatch):
    # Timings given by hand: head 2, 6, 12 ms against 1, 3, 2 ms. Medians 6 and 2; per-pair ratios 2, 2, 6, whose
    # median is 2 (the ratio of the medians would be 3, the means 6.67 and 2).
    times = ([2e-3, 6e-3, 12e-3], [1e-3, 3e-3, 2e-3])
    monkeypatch.setattr(bench, 'interleaved_times', lambda *fns, **timing: times)
    result = bench_head(_config(head), reps=3, warmup=0, clock='cpu')
    for kind in ('infer', 'train'):
        assert result[f'{kind}_head_ms'] == pytest.approx(6.0) and result[f'{kind}_backbone_ms'] == pytest.approx(2.0)
        assert result[f'{kind}_ratio'] == pytest.approx(2.0)
        # a head never computes less than the backbone passes it is charged with
        assert result[f'{kind}_flop_ratio'] >= 1.0


def _conv_calls(model) -> list[tuple[bool, bool, torch.dtype]]:
    """Per call of the backbone's first convolution: (input channels-last, weight channels-last, output dtype)."""
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    calls = []

    def record(module, inputs, output):
        channels_last = torch.channels_last
        calls.append(
            (
                inputs[0].is_contiguous(memory_format=channels_last),
                module.weight.is_contiguous(memory_format=channels_last),
                output.dtype,
            )
        )

    conv.register_forward_hook(record)
    return calls


@pytest.mark.parametrize(
    ('setting', 'image_input', 'weight', 'dtype'),
    [
        ({}, False, False, torch.float32),
        ({'channels_last': True}, True, True, torch.float32),
        ({'amp': 'bf16'}, False, False, torch.bfloat16),
    ],
)
def test_bench_settings_change_what_the_head_and_the_backbone_passes_run(head, setting, image_input, weight, dtype):
    cfg = _config(head, **setting)
    model = build_model(cfg)
    calls = _conv_calls(model)
    for make_fns in (inference_fns, train_fns):
        for fn in make_fns(model, cfg):
            calls.clear()
            fn()
            # the image pass comes first on both sides; a head's crops are laid out by the head itself
            assert calls[0][0] == image_input
            assert {(w, d) for _, w, d in calls} == {(weight, dtype)}


def test_table_flags_ratios_above_target():
    row = dict(
        head='lfd',
        backbone='b',
        img_size=64,
        batch_size=2,
        grad_checkpointing=False,
        infer_head_ms=2.2,
        infer_backbone_ms=2.0,
        infer_ratio=1.10,
        infer_flop_ratio=1.01,
        train_head_ms=3.0,
        train_backbone_ms=3.0,
        train_ratio=1.0,
        train_flop_ratio=1.02,
    )
    line = format_table([row]).splitlines()[-1]
    assert '| 1.100 (>1.05) | 1.010 |' in line and '| 1.000 | 1.020 |' in line and '(>1.10)' not in line


def test_train_step_peak_memory_grows_with_the_batch():
    # LFD's activations grow with the batch (image + m crops each); 16x the images must show as more memory
    small = train_peak_memory(_config('lfd'), backbone_only=True)
    large = train_peak_memory(dataclasses.replace(_config('lfd'), batch_size=32), backbone_only=True)
    assert 0 <= small < large


def test_bench_command_prints_the_ratio_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    code = run(
        [
            'bench',
            '--backbone',
            'test_resnet',
            '--img-size',
            '64',
            '--num-classes',
            '3',
            '--reps',
            '1',
            '--warmup',
            '0',
            '--no-memory',
            '--head-args',
            TINY_ARGS,
            '--json',
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert 'infer ratio' in printed and 'train ratio' in printed
    rows = json.loads(out.read_text())['timing']
    lfd_row = next(r for r in rows if r['head'] == 'lfd')
    assert [r['head'] for r in rows] == list_heads()
    assert lfd_row['head_args'] == dict(zoom_size=24, region_sizes=[0.35, 0.5])  # wins over --zoom-ratio's 32


def test_unknown_head_args_chunk_is_refused():
    with pytest.raises(UsageError, match="--head-args 'resnet:x=1': write NAME:key=value"):
        run(['bench', '--backbone', 'test_resnet', '--head-args', 'resnet:x=1', '--no-memory'])


def test_iagn_training_at_batch_one_is_refused_with_the_fix():
    with pytest.raises(ValueError, match='--batch-size >= 2 or --no-train'):
        run(['bench', '--heads', 'iagn', '--batch-size', '1', '--backbone', 'test_resnet', '--no-memory'])


def test_a_heads_own_refusal_of_its_arguments_says_how_the_grid_sets_them():
    grid = BenchGrid(['lfd'], 'test_resnet', [64], num_classes=3, head_args='lfd:num_hybrid_regions=9', train=False)
    (cfg,) = grid_configs(grid)
    with pytest.raises(ValueError, match=r"num_hybrid_regions \(9\).*--head-args 'lfd:num_\w*regions=\d+'") as e:
        bench_in_grid(cfg, grid)
    assert 'num_hybrid_regions (9)' in str(e.value.__cause__)  # raised by the head, in fgvc_zoo


def test_an_error_raised_outside_fgvc_zoo_goes_up_unchanged(monkeypatch):
    def fails(*args, **kwargs):
        raise ValueError('not a refusal of fgvc_zoo')  # raised here, in tests/: a bug, its traceback kept

    monkeypatch.setattr(bench, 'bench_head', fails)
    grid = BenchGrid(['lfd'], 'test_resnet', [64], num_classes=3)
    with pytest.raises(ValueError) as e:
        bench_in_grid(grid_configs(grid)[0], grid)
    assert str(e.value) == 'not a refusal of fgvc_zoo' and e.value.__cause__ is None


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_compile_on_a_torch_too_old_for_it_fails_in_one_line_naming_the_versions(monkeypatch):
    import fgvc_zoo.bench
    from fgvc_zoo.errors import UsageError

    monkeypatch.setattr(fgvc_zoo.bench, 'COMPILE_MIN_TORCH', (99, 0))
    with pytest.raises(UsageError, match=r'--compile needs torch>=99\.0') as e:
        run(['bench', '--heads', 'dpnet', '--backbone', 'test_resnet', '--compile', '--no-train'])
    assert torch.__version__ in str(e.value) and '\n' not in str(e.value)
