"""Security: weights load only through safetensors or `torch.load(weights_only=True)`, so a pickle checkpoint
cannot run code; recipes and head options are parsed as plain YAML; dataset metadata cannot point outside the
dataset root."""

import pickle
import re

import pytest
import timm
import torch
import yaml
from reliability_helpers import PACKAGE, train_args

from fgvc_zoo import cli
from fgvc_zoo.data import DatasetError
from fgvc_zoo.hub import load_model

# Calls that deserialise with pickle, or build Python objects from YAML tags.
UNSAFE_CALLS = re.compile(
    r'\bpickle\.loads?\(|\bdill\.|\byaml\.(load|full_load|unsafe_load|load_all)\(|'
    r'\bUnsafeLoader\b|\bnp\.load\([^)]*allow_pickle=True'
)


def package_sources():
    return sorted(PACKAGE.rglob('*.py'))


def test_the_package_never_calls_torch_load_without_weights_only_true():
    offending = []
    for path in package_sources():
        text = path.read_text()
        for match in re.finditer(r'torch\.load\(', text):
            call = text[match.start() : text.find(')', match.end()) + 1]
            if 'weights_only=True' not in call:
                offending.append(f'{path.relative_to(PACKAGE.parent)}: {call}')
    assert offending == []


def test_the_package_never_unpickles_or_loads_yaml_unsafely():
    offending = [
        f'{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}'
        for path in package_sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UNSAFE_CALLS.search(line)
    ]
    assert offending == []


def test_the_source_checks_would_catch_an_unsafe_call():
    assert UNSAFE_CALLS.search('state = pickle.load(f)') and UNSAFE_CALLS.search('yaml.load(text, Loader=L)')
    assert not UNSAFE_CALLS.search('yaml.safe_load(text)')


class _Payload:
    """Unpickling this creates `marker`: proof that the file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def write_malicious_pickle(path, marker):
    path.write_bytes(pickle.dumps({'state_dict': _Payload(marker)}))
    return path


def test_a_malicious_pickle_checkpoint_is_refused_unexecuted_by_export(tmp_path):
    marker = tmp_path / 'executed'
    checkpoint = write_malicious_pickle(tmp_path / 'lfd.pth', marker)
    with pytest.raises(RuntimeError, match='weights_only=True blocked loading this checkpoint'):
        cli.run(
            [
                'export',
                str(tmp_path / 'out'),
                '--model',
                'lfd',
                '--num-classes',
                '2',
                '--checkpoint',
                str(checkpoint),
                '--model-kwargs',
                'backbone=test_resnet',
            ]
        )
    assert not marker.exists()


def test_a_malicious_pickle_weights_file_is_refused_unexecuted_by_create_model(tmp_path):
    marker = tmp_path / 'executed'
    checkpoint = write_malicious_pickle(tmp_path / 'model.pth', marker)
    with pytest.raises(RuntimeError, match='weights_only=True blocked loading this checkpoint'):
        timm.create_model(
            'lfd',
            backbone='test_resnet',
            num_classes=2,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(checkpoint)),
        )
    assert not marker.exists()


def test_an_export_folder_holding_only_a_pickle_is_refused_by_load_model(tmp_path):
    marker = tmp_path / 'executed'
    write_malicious_pickle(tmp_path / 'pytorch_model.bin', marker)
    (tmp_path / 'config.json').write_text('{"architecture": "lfd", "num_classes": 2}')
    with pytest.raises(
        FileNotFoundError,
        match=r'no model.safetensors \(it holds pytorch_model.bin, which fgvc_zoo '
        r'never loads\)',
    ):
        load_model(str(tmp_path))
    assert not marker.exists()


def test_resume_never_runs_code_from_a_checkpoint(tiny_data, tmp_path):
    output = tmp_path / 'run'
    assert cli.run(train_args(tiny_data, output, 1)) == 0
    marker = tmp_path / 'executed'
    for pkl in (output / 'checkpoints' / 'epoch_001').glob('*.pkl'):
        write_malicious_pickle(pkl, marker)
    # accelerate refuses the pickles (weights_only) and would resume with fresh randomness: the trainer stops instead
    with pytest.raises(RuntimeError, match=r'its random state random_states_0\.pkl cannot be read .* fresh randomness'):
        cli.run(train_args(tiny_data, output, 2, '--resume'))
    assert not marker.exists()


def test_a_resume_restores_the_random_state_the_checkpoint_saved(tmp_path):
    from accelerate import Accelerator

    from fgvc_zoo.training.checkpoints import restore_state

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(3)
    accelerator.save_state(str(tmp_path / 'checkpoint'))
    expected = torch.rand(4)
    torch.manual_seed(99)  # what a fresh process would have
    restore_state(accelerator, tmp_path / 'checkpoint')
    assert torch.equal(torch.rand(4), expected)
    (tmp_path / 'checkpoint' / 'random_states_0.pkl').write_bytes(b'')
    with pytest.raises(RuntimeError, match='random_states_0.pkl cannot be read'):
        restore_state(accelerator, tmp_path / 'checkpoint')


def test_a_recipe_with_a_python_tag_is_refused_and_nothing_runs(tiny_data, tmp_path):
    marker = tmp_path / 'executed'
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(f"lr: 0.01\nepochs: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(
        (yaml.YAMLError, ValueError),
        match=r'could not determine a constructor for the tag '
        r"'tag:yaml.org,2002:python/object/apply:builtins.open'",
    ):
        cli.run(train_args(tiny_data, tmp_path / 'run', 1, '--recipe', str(recipe)))
    assert not marker.exists()


def test_a_recipe_yaml_error_names_the_recipe_file(tiny_data, tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('epochs: !!python/object/apply:os.getcwd []\n')
    with pytest.raises(ValueError, match=r'--recipe \S*recipe.yaml'):
        cli.run(train_args(tiny_data, tmp_path / 'run', 1, '--recipe', str(recipe)))


def test_head_options_with_a_python_tag_are_refused_and_nothing_runs(tiny_data, tmp_path):
    marker = tmp_path / 'executed'
    with pytest.raises((yaml.YAMLError, ValueError), match='could not determine a constructor'):
        cli.run(
            train_args(
                tiny_data,
                tmp_path / 'run',
                1,
                '--model-kwargs',
                f"{{zoom_size: !!python/object/apply:builtins.open ['{marker}', 'w']}}",
            )
        )
    assert not marker.exists()


def make_cub(root, image_paths):
    """A CUB-200-2011 layout whose images.txt lists `image_paths` (the first two exist, one per class)."""
    (root / 'images' / '001.A').mkdir(parents=True)
    (root / 'images' / '002.B').mkdir(parents=True)
    from PIL import Image

    Image.new('RGB', (64, 64), 'red').save(root / 'images' / '001.A' / 'a.jpg')
    Image.new('RGB', (64, 64), 'blue').save(root / 'images' / '002.B' / 'b.jpg')
    (root / 'classes.txt').write_text('1 001.A\n2 002.B\n')
    (root / 'images.txt').write_text(''.join(f'{i} {p}\n' for i, p in enumerate(image_paths, 1)))
    (root / 'image_class_labels.txt').write_text(''.join(f'{i} {1 + i % 2}\n' for i in range(1, len(image_paths) + 1)))
    (root / 'train_test_split.txt').write_text(''.join(f'{i} {i % 2}\n' for i in range(1, len(image_paths) + 1)))
    return root


@pytest.mark.parametrize('escape', ['../../outside.jpg', '/etc/passwd', '001.A/../../../outside.jpg'])
def test_the_trainer_refuses_metadata_paths_that_leave_the_dataset_root(escape, tmp_path):
    secret = tmp_path / 'outside.jpg'
    secret.write_bytes(b'not for training')
    root = make_cub(tmp_path / 'data' / 'CUB_200_2011', ['001.A/a.jpg', '002.B/b.jpg', escape, '001.A/a.jpg'])
    with pytest.raises(DatasetError, match=r'images.txt line 3: path .* escapes the dataset root'):
        cli.run(train_args(root, tmp_path / 'run', 1, '--dataset-layout', 'cub'))
    assert not (tmp_path / 'run' / 'checkpoints').exists()
