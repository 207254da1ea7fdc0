"""The console script: one-line errors with the right exit status, close matches, --debug, a fast start."""

import os
import subprocess
import sys

import pytest
import yaml

from fgvc_zoo import cli
from fgvc_zoo.bench import parse_head_args
from fgvc_zoo.commands.common import report_errors
from fgvc_zoo.errors import UsageError
from fgvc_zoo.runtime import parse_model_kwargs, parse_options


def console(capsys, *argv: str) -> tuple[int, str]:
    """`fgvc-zoo ARGV` as the console script runs it: (exit status, stderr)."""
    with pytest.raises(SystemExit) as ended:
        cli.main(list(argv))
    return ended.value.code, capsys.readouterr().err


def test_a_usage_error_is_one_line_with_status_2_and_no_traceback(capsys, tmp_path):
    status, err = console(capsys, 'train', '--model', 'lfd', '--synthetic', '--output', str(tmp_path / 'run'))
    assert status == 2
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith('fgvc-zoo train: error: --model lfd is a generic head: pass --backbone NAME')


def test_a_runtime_error_is_one_line_with_status_1(capsys, tmp_path):
    status, err = console(capsys, 'eval', '--checkpoint', str(tmp_path / 'missing'), '--data-dir', str(tmp_path))
    assert status == 1
    assert err.count('\n') == 1 and err.startswith(f"fgvc-zoo eval: error: '{tmp_path / 'missing'}' is not an export")


def test_a_mistyped_option_or_command_names_close_matches(capsys):
    status, err = console(capsys, 'train', '--model', 'lfd', '--lrr', '0.1')
    assert status == 2 and err.count('\n') == 1
    assert 'unrecognized arguments: --lrr 0.1 (--lrr: did you mean --lr' in err
    status, err = console(capsys, 'trian')
    assert status == 2 and "unknown command 'trian'. Did you mean train?" in err


def test_a_mistyped_model_argument_names_the_heads_arguments(capsys, tmp_path):
    output = tmp_path / 'run'
    status, err = console(
        capsys, 'train', '--model', 'lfd', '--backbone', 'test_resnet', '--model-args', 'num_regionz=2',
        '--synthetic', '--img-size', '64', '--workers', '0', '--output', str(output),
    )  # fmt: skip
    assert status == 2 and err.count('\n') == 1
    assert "has no argument 'num_regionz'. Did you mean num_regions" in err
    assert not output.exists(), 'the failed start left its output folder (lock, generated data) behind'


def test_a_failed_start_keeps_a_folder_it_did_not_create(capsys, tmp_path):
    output = tmp_path / 'mine'
    (output / 'notes.txt').parent.mkdir()
    (output / 'notes.txt').write_text('kept')
    args = ['--model-args', 'num_regionz=2', '--synthetic', '--img-size', '64', '--workers', '0']
    status, _ = console(capsys, 'train', '--model', 'lfd', '--backbone', 'test_resnet', *args, '--output', str(output))
    assert status == 2 and (output / 'notes.txt').read_text() == 'kept'


@pytest.mark.parametrize('how', ['flag', 'env'])
def test_debug_adds_the_traceback(capsys, monkeypatch, tmp_path, how):
    argv = ['train', '--model', 'lfd', '--synthetic', '--output', str(tmp_path / 'run')]
    if how == 'flag':
        argv.insert(0, '--debug')
    else:
        monkeypatch.setenv('FGVC_ZOO_DEBUG', '1')
    status, err = console(capsys, *argv)
    assert status == 2
    assert 'Traceback' in err and err.strip().splitlines()[-1].startswith('fgvc-zoo train: error: --model lfd is')


def test_an_error_raised_outside_the_package_keeps_its_traceback():
    def buggy(argv):
        raise ValueError('raised by code that is not fgvc_zoo: a bug, not a message for the user')

    with pytest.raises(ValueError, match='a bug'):
        report_errors(buggy, [], 'fgvc-zoo test')


def test_a_file_error_is_one_line_wherever_it_is_raised(capsys, tmp_path):
    def opens(argv):
        open(tmp_path / 'missing.txt')

    assert report_errors(opens, [], 'fgvc-zoo test') == 1
    assert capsys.readouterr().err.startswith('fgvc-zoo test: error: [Errno 2] No such file or directory')


def test_every_help_shows_the_defaults(capsys):
    for command, default in (('eval', '(default: 32)'), ('predict', '(default: 5)'), ('train', '(default: 100)')):
        with pytest.raises(SystemExit):
            cli.run([command, '--help'])
        assert default in capsys.readouterr().out


def test_help_imports_neither_torch_nor_timm():
    # Its time is measured by benchmarks/startup.py: a timed unit test fails on a busy machine.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    script = (
        'import sys, runpy; sys.argv = ["fgvc-zoo", "--help"]\n'
        'try:\n    runpy.run_module("fgvc_zoo.cli", run_name="__main__")\n'
        'except SystemExit:\n    pass\n'
        'assert "torch" not in sys.modules and "timm" not in sys.modules, "--help imported torch or timm"'
    )
    finished = subprocess.run([sys.executable, '-c', script], capture_output=True, env=env, timeout=60)
    assert finished.returncode == 0 and b'COMMAND' in finished.stdout, finished.stderr


@pytest.mark.parametrize(
    'first',
    ['import fgvc_zoo', 'import fgvc_zoo.hub', 'from fgvc_zoo.layers import cam', 'import fgvc_zoo.models._backbone'],
)
def test_importing_fgvc_zoo_before_timm_registers_the_heads_and_leaves_no_hook(first):
    # fgvc_zoo.hub and fgvc_zoo.models._backbone import timm before they are done: the registration must wait for
    # neither (hub is above models) or be done by the module itself (models).
    script = (
        f'{first}; import sys, timm, fgvc_zoo\n'
        'assert timm.is_model("lfd") and timm.is_model("iagn_resnet50"), "not registered"\n'
        'assert not [f for f in sys.meta_path if type(f).__module__ == "fgvc_zoo"], "the hook stayed"\n'
        'assert type(timm.__loader__).__module__ != "fgvc_zoo" and timm.__spec__.loader is timm.__loader__'
    )
    subprocess.run([sys.executable, '-W', 'error::RuntimeWarning', '-c', script], check=True, timeout=120)


def test_a_failed_registration_warns_and_leaves_timm_importable():
    # fgvc_zoo.models made unimportable (None in sys.modules): `import timm` still works, with a warning that says so
    script = (
        'import sys, fgvc_zoo\nsys.modules["fgvc_zoo.models"] = None\n'
        'import timm\nassert not timm.is_model("lfd")\ntimm.create_model("test_resnet")'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    finished = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert 'fgvc_zoo could not register its heads with timm (ModuleNotFoundError' in finished.stderr


def test_torch_threads_share_the_cores_between_processes_and_data_workers(monkeypatch):
    from fgvc_zoo.runtime import cpu_threads

    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert cpu_threads(0, workers=4) == 4  # 16 cores / (1 process x 4 workers)
    assert cpu_threads(0, workers=0) == 16
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')  # torchrun --nproc_per_node 2
    assert cpu_threads(0, workers=4) == 2
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    assert cpu_threads(0, workers=2) == 1  # never 0
    assert cpu_threads(3, workers=2) == 3  # --threads wins


OPTIONS = {'region_sizes': [0.3, 0.4], 'zoom_size': 32, 'cam_mode': 'pred', 'lr': 0.01, 'image_only': True}


@pytest.mark.parametrize(
    'options',
    [
        'region_sizes=[0.3,0.4],zoom_size=32,cam_mode=pred,lr=1e-2,image_only=true',
        ['region_sizes=[0.3, 0.4]', 'zoom_size=32', 'cam_mode=pred', 'lr=1e-2', 'image_only=True'],
        '{region_sizes: [0.3, 0.4], zoom_size: 32, cam_mode: pred, lr: 0.01, image_only: true}',
    ],
)
def test_one_option_syntax_for_model_args_model_kwargs_dataset_args_and_head_args(options, tmp_path):
    assert parse_options(options, '--dataset-args') == OPTIONS
    text = options if isinstance(options, str) else ','.join(options)
    assert parse_model_kwargs(text) == parse_model_kwargs(None, text) == OPTIONS
    assert parse_head_args(f'lfd:{text};dpnet:w_cs=0.5') == {'lfd': OPTIONS, 'dpnet': {'w_cs': 0.5}}
    (tmp_path / 'options.yaml').write_text(yaml.safe_dump(OPTIONS))
    assert parse_options(str(tmp_path / 'options.yaml'), '--model-kwargs') == OPTIONS


def test_an_option_value_is_a_python_literal_else_yaml():
    assert parse_options('sizes=(0.3, 0.4),name=pred,off=false', '--x') == {
        'sizes': (0.3, 0.4),
        'name': 'pred',
        'off': False,
    }
    with pytest.raises(UsageError, match="--head-args lfd: 'zoom' is not key=value"):
        parse_head_args('lfd:zoom,a=1')
