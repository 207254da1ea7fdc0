"""Unreadable images end to end (the loaders' own cases are in tests/test_data.py): a training run skips a corrupt
file with a warning naming it and lists it in its results; a run whose data is mostly unreadable stops before
training with an error naming the files and the flag to change."""

import pytest
from reliability_helpers import make_folder, results, train_args

from fgvc_zoo import cli
from fgvc_zoo.data import UnreadableDataError


@pytest.fixture(scope='module')
def one_corrupt_of_20(tmp_path_factory):
    """16 training images, 4 validation images; one validation PNG is cut to its first 100 bytes."""
    root = make_folder(tmp_path_factory.mktemp('one_corrupt'))
    corrupt = root / 'val' / 'red' / '001.png'
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    return root, corrupt


@pytest.fixture(scope='module')
def tolerant_run(one_corrupt_of_20, tmp_path_factory):
    """A run allowed 30 % unreadable images per split (the val split loses 1 of 4), and its warnings."""
    root, _ = one_corrupt_of_20
    output = tmp_path_factory.mktemp('tolerant')
    with pytest.warns(UserWarning) as caught:
        assert cli.run(train_args(root, output, 1, '--max-unreadable', '0.3')) == 0
    return output, [str(w.message) for w in caught]


def test_a_run_with_one_corrupt_image_completes_and_warns_naming_it(one_corrupt_of_20, tolerant_run):
    _, corrupt = one_corrupt_of_20
    output, warnings = tolerant_run
    assert any(f'skipping unreadable image {str(corrupt)!r}' in w for w in warnings)
    assert results(output)['dataset']['val_images'] == 3  # evaluated on the 3 readable images
    assert (output / 'model.safetensors').is_file()


def test_the_run_lists_the_skipped_image_in_results_json(one_corrupt_of_20, tolerant_run):
    _, corrupt = one_corrupt_of_20
    output, _ = tolerant_run
    assert str(corrupt) in str(results(output)['dataset'])


def test_the_default_share_stops_the_run_naming_the_file_and_the_flag(one_corrupt_of_20, tmp_path):
    root, corrupt = one_corrupt_of_20
    # 1 of 4 val images is 25 %, over the default --max-unreadable 0.01.
    with pytest.warns(UserWarning), pytest.raises(UnreadableDataError) as stop:
        cli.run(train_args(root, tmp_path / 'run', 1))
    assert '1 of 4 images (25.0%)' in str(stop.value) and str(corrupt) in str(stop.value)
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_the_stop_names_the_trainer_flag_to_raise(one_corrupt_of_20, tmp_path):
    root, _ = one_corrupt_of_20
    with pytest.warns(UserWarning), pytest.raises(UnreadableDataError, match='--max-unreadable'):
        cli.run(train_args(root, tmp_path / 'run', 1))


def test_a_half_unreadable_training_split_stops_before_training(tmp_path):
    root = make_folder(tmp_path / 'data')
    broken = sorted((root / 'train').rglob('*.png'))[::2]  # 8 of 16
    for path in broken:
        path.write_bytes(b'')
    with pytest.warns(UserWarning), pytest.raises(UnreadableDataError) as stop:
        cli.run(train_args(root, tmp_path / 'run', 1, '--max-unreadable', '0.3'))
    message = str(stop.value)
    assert '8 of 16 images (50.0%)' in message and 'more than max_unreadable_fraction=0.3' in message
    assert all(f'{path}: zero-byte file' in message for path in broken)
    assert not (tmp_path / 'run' / 'checkpoints').exists()
