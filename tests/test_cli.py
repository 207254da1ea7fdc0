"""The console script: one-line errors with the right exit status, close matches, --debug, a fast start."""

import inspect
import os
import subprocess
import sys

import pytest
import yaml

from fgvc_zoo import cli
from fgvc_zoo.bench import parse_head_args
from fgvc_zoo.commands.common import report_errors
from fgvc_zoo.data.synthetic import make_synthetic_fgvc
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
    [
        'import fgvc_zoo',
        'import fgvc_zoo.hub',
        'import fgvc_zoo.convert',
        'from fgvc_zoo.layers import cam',
        'import fgvc_zoo.models._backbone',
    ],
)
def test_importing_fgvc_zoo_before_timm_registers_the_heads_and_leaves_no_hook(first):
    # fgvc_zoo.hub, fgvc_zoo.convert and fgvc_zoo.models._backbone import timm before they are done: the registration
    # must wait for neither (hub and convert are above models) or be done by the module itself (models).
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


OPTIONS = {'region_sizes': [0.3, 0.4], 'zoom_size': 32, 'cam_mode': 'pred', 'lr': 0.01, 'cam_baseline': True}


@pytest.mark.parametrize(
    'options',
    [
        'region_sizes=[0.3,0.4],zoom_size=32,cam_mode=pred,lr=1e-2,cam_baseline=true',
        ['region_sizes=[0.3, 0.4]', 'zoom_size=32', 'cam_mode=pred', 'lr=1e-2', 'cam_baseline=True'],
        '{region_sizes: [0.3, 0.4], zoom_size: 32, cam_mode: pred, lr: 0.01, cam_baseline: true}',
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


@pytest.mark.parametrize('from_recipe', [False, True])
def test_a_named_variant_with_another_backbone_is_refused_naming_both_and_the_ways_out(capsys, tmp_path, from_recipe):
    output = tmp_path / 'run'
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model: lfd_resnet50\nbackbone: resnet18\n')
    model = ['--recipe', str(recipe)] if from_recipe else ['--model', 'lfd_resnet50', '--backbone', 'resnet18']
    status, err = console(capsys, 'train', *model, '--synthetic', '--img-size', '64', '--workers', '0',
                          '--output', str(output))  # fmt: skip
    assert status == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert '--model lfd_resnet50 is lfd over resnet50, but --backbone resnet18' in err
    assert '(--model lfd --backbone resnet18)' in err and 'drop --backbone' in err
    assert not output.exists()


@pytest.mark.parametrize('case', ['variant with another backbone', 'no such data folder'])
def test_a_train_error_is_the_only_line_though_a_warning_would_come_first(tmp_path, case):
    """Without --pretrained the run warns about random weights, but only once it is set up: an error before that
    is all the user reads."""
    data = make_synthetic_fgvc(str(tmp_path / 'data'), num_classes=2, train_per_class=1, val_per_class=1, image_size=32)
    model, data_dir, words = {
        'variant with another backbone': (
            ['lfd_resnet50', '--backbone', 'resnet18'],
            data,
            'asks for another backbone',
        ),
        'no such data folder': (['dpnet', '--backbone', 'test_resnet'], str(tmp_path / 'missing'), 'is not a folder'),
    }[case]
    argv = ['train', '--model', *model, '--data-dir', data_dir, '--img-size', '32', '--workers', '0',
            '--output', str(tmp_path / 'run')]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE='1')  # logging as a console has it
    finished = subprocess.run([sys.executable, '-m', 'fgvc_zoo.cli', *argv], capture_output=True, text=True, env=env)
    err = finished.stderr
    assert err.count('\n') == 1 and err.startswith('fgvc-zoo train: error:') and words in err, err
    assert finished.returncode in (1, 2)


@pytest.mark.parametrize('mistake', [['--img-size', '0'], ['--img-sise', '32'], ['--epochs', 'one']])
def test_a_train_usage_error_is_refused_before_torch_or_timm_is_imported(mistake, tmp_path):
    """Importing them takes seconds from a cold disk cache; a typo is answered at once."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    script = (
        'import sys\nfrom fgvc_zoo.cli import main\n'
        'try:\n    main(sys.argv[1:])\n'
        'except SystemExit as e:\n    print(e.code, "torch" in sys.modules, "timm" in sys.modules)'
    )
    argv = [
        'train',
        '--model',
        'dpnet',
        '--backbone',
        'test_resnet',
        '--synthetic',
        '--output',
        str(tmp_path),
        *mistake,
    ]
    finished = subprocess.run(
        [sys.executable, '-c', script, *argv], capture_output=True, text=True, env=env, timeout=60
    )
    assert finished.stdout == '2 False False\n' and finished.stderr.count('\n') == 1, finished.stderr


def test_the_way_out_of_a_variant_with_another_backbone_trains_that_backbone():
    from fgvc_zoo.commands.common import ArgumentParser
    from fgvc_zoo.training.config import add_train_arguments, resolve_config
    from fgvc_zoo.training.loop import build_model

    parser = ArgumentParser()
    add_train_arguments(parser)
    model = build_model(
        resolve_config(parser.parse_args(['--model', 'lfd', '--backbone', 'resnet18', '--synthetic'])), 4
    )
    assert model.backbone.name.split('.')[0] == 'resnet18'
    same = resolve_config(parser.parse_args(['--model', 'lfd_resnet50', '--backbone', 'resnet50', '--synthetic']))
    assert build_model(same, 4).backbone.name.split('.')[0] == 'resnet50'


# Every hint an error gives is a command or flag that exists and does what the hint says.


def parse_hint(command: str):
    """The namespace `fgvc-zoo ...` (a command a hint quotes) parses to: argparse exits (status 2) on a bad one."""
    import importlib
    import shlex

    from fgvc_zoo.commands.common import ArgumentParser

    argv = shlex.split(command)
    assert argv[0] == 'fgvc-zoo' and argv[1] in cli.SUBCOMMANDS, command
    parser = ArgumentParser(prog=f'fgvc-zoo {argv[1]}')
    importlib.import_module(f'fgvc_zoo.commands.{cli.SUBCOMMANDS[argv[1]][0]}').add_arguments(parser)
    return parser.parse_args(argv[2:])


def quoted_commands(message: str) -> list[str]:
    return [c for c in message.split('`')[1::2] if c.startswith('fgvc-zoo ')]


def test_export_of_a_folder_without_config_hints_at_a_command_that_exists(capsys, tmp_path):
    status, err = console(capsys, 'export', str(tmp_path / 'notarun'))
    assert status == 1 and err.count('\n') == 1 and 'no such folder' in err
    (tmp_path / 'weights').mkdir()
    status, err = console(capsys, 'export', str(tmp_path / 'weights'))
    assert status == 1 and err.count('\n') == 1
    [hint] = quoted_commands(err)
    assert hint != f'fgvc-zoo export {tmp_path / "weights"}', 'the hint repeats the command that failed'
    args = parse_hint(hint)
    assert args.dir == str(tmp_path / 'weights') and args.model and args.checkpoint
    (tmp_path / 'unfinished' / 'checkpoints').mkdir(parents=True)
    status, err = console(capsys, 'export', str(tmp_path / 'unfinished'))
    [hint] = quoted_commands(err)
    args = parse_hint(hint)
    assert args.output == str(tmp_path / 'unfinished') and args.resume == 'auto'


@pytest.mark.parametrize('command', ['train', 'eval', 'predict', 'explain', 'export'])
def test_img_size_0_is_refused_in_one_line_before_any_work(capsys, tmp_path, command):
    argv = {
        'train': ['--model', 'dpnet', '--backbone', 'test_resnet', '--synthetic', '--output', str(tmp_path / 'run')],
        'eval': ['--model', 'test_resnet', '--data-dir', str(tmp_path)],
        'predict': ['--model', 'test_resnet', 'x.png'],
        'explain': ['--model', 'test_resnet', 'x.png'],
        'export': [str(tmp_path), '--onnx'],
    }[command]
    status, err = console(capsys, command, *argv, '--img-size', '0')
    assert status == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert '--img-size' in err and '>= 1' in err
    assert not (tmp_path / 'run').exists()


def test_train_refuses_negative_or_out_of_range_numbers(capsys, tmp_path):
    common = ['train', '--model', 'dpnet', '--backbone', 'test_resnet', '--synthetic', '--output', str(tmp_path / 'r')]
    for flag, value, words in [('--workers', '-1', '>= 0'), ('--lr', '-0.1', '>= 0'), ('--hflip', '2', '[0, 1]')]:
        status, err = console(capsys, *common, flag, value)
        assert status == 2 and err.count('\n') == 1 and flag in err and words in err, err


def test_the_offline_hint_against_a_recipes_pretrained_names_a_flag_that_turns_it_off(capsys, tmp_path, monkeypatch):
    from fgvc_zoo.training.config import resolve_config

    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model: dpnet_resnet50\npretrained: true\n')
    flags = ['--recipe', str(recipe), '--synthetic', '--img-size', '64', '--workers', '0']
    status, err = console(capsys, 'train', *flags, '--output', str(tmp_path / 'run'))
    assert status == 1 and err.count('\n') == 1
    assert 'drop --pretrained' not in err and 'pass --no-pretrained' in err
    args = parse_hint(f'fgvc-zoo train {" ".join(flags)} --no-pretrained')
    assert resolve_config(args).pretrained is False


def test_a_recipes_dataset_layout_with_synthetic_names_the_layout_to_pass(capsys, tmp_path):
    from fgvc_zoo.training.config import resolve_config

    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model: dpnet\nbackbone: test_resnet\ndataset-layout: cub\n')
    flags = ['--recipe', str(recipe), '--synthetic', '--output', str(tmp_path / 'run')]
    status, err = console(capsys, 'train', *flags)
    assert status == 2 and err.count('\n') == 1 and 'pass --dataset-layout folder' in err
    assert resolve_config(parse_hint(f'fgvc-zoo train {" ".join(flags)} --dataset-layout folder')).synthetic


def test_bench_tells_a_heads_argument_fix_in_head_args_syntax(capsys):
    from fgvc_zoo.bench import parse_head_args
    from fgvc_zoo.models import head_class

    flags = ['--heads', 'lfd', '--backbone', 'test_resnet', '--img-size', '32', '--reps', '1', '--no-train']
    status, err = console(capsys, 'bench', *flags)  # too small an input for LFD's 6 regions
    assert status == 1 and err.count('\n') == 1
    suggested = err.split("--head-args '")[-1].split("'")[0]
    [(head, kwargs)] = parse_head_args(suggested).items()
    assert head == 'lfd' and set(kwargs) <= set(inspect.signature(head_class('lfd').__init__).parameters)
    assert 'num_regions' in kwargs  # the argument the head's message names


def test_bench_prints_its_table_once(capsys):
    flags = ['--heads', 'dpnet', '--backbone', 'test_resnet', '--img-size', '64', '--reps', '1', '--no-train']
    with pytest.raises(SystemExit) as ended:
        cli.main(['bench', *flags])
    out = capsys.readouterr().out
    assert ended.value.code == 0
    assert out.count('| head | backbone |') == 1 and out.count('| dpnet | test_resnet | 64 |') == 1, out
