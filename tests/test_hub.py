"""Hub publishing and loading: export, the Hub cache offline, push to a Hub on 127.0.0.1, and the errors.

Every model is an LFD over timm's `test_resnet` with 3 classes on 64 px images; a Hub cache is built in tmp_path in
the layout huggingface_hub uses (`models--ORG--NAME/{blobs,refs/main,snapshots/<sha>/}`) and `HF_HUB_OFFLINE=1`
(tests/conftest.py) holds throughout, except in the push subprocess, which talks only to the test Hub.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import yaml
from hub_server import HubServer, served_files
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save, save_file
from timm.models import _registry

from fgvc_zoo import cli, hub

HEAD_ARGS = dict(backbone='test_resnet', num_regions=2, num_hybrid_regions=1, zoom_size=32, region_sizes=(0.5,))
LABELS = ['sparrow', 'wren', 'finch']
RESULTS = {
    'metrics': {'top1': 66.67, 'top5': 100.0},
    'dataset': {'name': 'cub_200_2011', 'layout': 'cub'},
    'config': {'epochs': 2, 'lr': 0.01, 'batch_size': 2},
    'seed': 0,
}
TAG = 'toy_birds'
TEST_RESNET_HUB_ID = timm.models.get_pretrained_cfg('test_resnet').hf_hub_id  # timm/test_resnet.r160_in1k
REPO = f'{hub.HUB_ORG}/lfd_test_resnet.{TAG}'


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def exported(tmp_path):
    model = timm.create_model('lfd', num_classes=3, **HEAD_ARGS).eval()
    folder = hub.save_pretrained(model, tmp_path / 'export', label_names=LABELS, results=RESULTS)
    (folder / 'results.json').write_text(json.dumps(RESULTS))
    return model, folder


def _cache_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay out `files` as huggingface_hub caches a downloaded repo: content-addressed blobs, a ref, a snapshot."""
    repo_dir = cache / f'models--{repo_id.replace("/", "--")}'
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_dir / 'snapshots' / commit
    (repo_dir / 'blobs').mkdir(parents=True)
    (repo_dir / 'refs').mkdir()
    snapshot.mkdir(parents=True)
    (repo_dir / 'refs' / 'main').write_text(commit)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repo_dir / 'blobs' / blob).write_bytes(content)
        (snapshot / name).symlink_to(Path('..', '..', 'blobs', blob))


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name in hub.PUSHED_FILES}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache the downloads read (huggingface_hub read HF_HUB_CACHE at import: patch its constant)."""
    assert huggingface_hub.constants.HF_HUB_OFFLINE, 'tests/conftest.py sets HF_HUB_OFFLINE=1'
    cache = tmp_path / 'hub_cache'
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    return cache


def _register_tag(monkeypatch, tag: str, repo_id: str, num_classes: int = 3) -> None:
    """What a head's default_cfgs gets for a published model: `'lfd.<tag>': _cfg(..., **hub_cfg(name))`."""
    org, name = repo_id.split('/')
    cfg = dataclasses.replace(
        timm.models.get_pretrained_cfg('lfd'),
        tag=tag,
        num_classes=num_classes,
        **hub.hub_cfg(name, org=org),
    )
    monkeypatch.setitem(_registry._model_pretrained_cfgs, f'lfd.{tag}', cfg)


def _pickle_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- export


def test_export_writes_safetensors_timm_config_and_card(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors', 'results.json']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'lfd'
    assert config['num_classes'] == 3
    assert config['num_features'] == 96  # test_resnet's last stage
    assert config['label_names'] == LABELS
    # backbone and head options, tuples as JSON lists, nothing about where weights came from; timm's save_for_hf
    # adds the input channels and the pool it reads off the model (the head's own reduction, 'head')
    assert config['model_args'] == dict(HEAD_ARGS, num_classes=3, region_sizes=[0.5], in_chans=3, global_pool='head')
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 448, 448]
    assert cfg['mean'] == [0.5, 0.5, 0.5] and cfg['std'] == [0.5, 0.5, 0.5]  # test_resnet's normalisation
    assert cfg['crop_pct'] == 448 / 600 and cfg['crop_mode'] == 'squash'  # LFD's eval: NTS-Net's 600 -> 448
    assert cfg['hf_hub_filename'] == 'model.safetensors'
    # built without pretrained weights: no base_model, and the record says so
    assert 'base_model' not in config and config['pretrained_weights'] is None
    assert 'import fgvc_zoo' in config['requires']
    weights = load_file(folder / 'model.safetensors')
    assert weights.keys() == model.state_dict().keys()


def test_local_export_loads_bit_for_bit_with_label_names(exported):
    model, folder = exported
    x = _images()
    expected = model(x)
    for loaded in (hub.load_model(str(folder)), timm.create_model(f'local-dir:{folder}', pretrained=True).eval()):
        assert torch.equal(loaded(x), expected)
        assert hub.model_label_names(loaded) == LABELS


@pytest.mark.parametrize('head', ['dpnet', 'iagn'])
def test_every_head_round_trips_through_an_export(head, tmp_path):
    model = timm.create_model(head, backbone='test_resnet', num_classes=3).eval()
    folder = hub.save_pretrained(model, tmp_path / head, label_names=LABELS)
    loaded = hub.load_model(str(folder))
    x = _images()
    assert torch.equal(loaded(x), model(x))
    assert hub.model_label_names(loaded) == LABELS
    assert head in yaml.safe_load((folder / 'README.md').read_text().split('---\n')[1])['tags']


def test_a_channels_last_model_exports_and_reloads_with_the_same_logits(tmp_path):
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3).eval()
    model = model.to(memory_format=torch.channels_last)
    folder = hub.save_pretrained(model, tmp_path / 'cl', label_names=LABELS)
    assert model.backbone.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)  # left as it was
    x = _images()  # compared in one memory format: a channels-last conv rounds differently
    assert torch.equal(hub.load_model(str(folder))(x), model.to(memory_format=torch.contiguous_format)(x))


def test_local_folder_with_only_a_pickle_is_refused(exported):
    model, folder = exported
    (folder / 'model.safetensors').unlink()
    (folder / 'pytorch_model.bin').write_bytes(_pickle_bytes(model.state_dict()))
    with pytest.raises(FileNotFoundError, match=r'no model\.safetensors \(it holds pytorch_model\.bin, which'):
        hub.load_model(str(folder))


def test_exported_weights_are_readable_as_the_umask_allows(tmp_path):
    """safetensors writes 0600; an export gets what a plain open() gives, 0644 under the usual umask 022."""
    model = timm.create_model('lfd', num_classes=3, **HEAD_ARGS).eval()
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            folder = hub.save_pretrained(model, tmp_path / f'umask_{umask:o}')
        finally:
            os.umask(old)
        assert (folder / 'model.safetensors').stat().st_mode & 0o777 == mode


def _cache_imagenet_test_resnet(hub_cache: Path) -> dict[str, torch.Tensor]:
    """timm's Hub repo of test_resnet's default weights, as a download would have left it (random values)."""
    weights = timm.create_model('test_resnet').state_dict()
    _cache_repo(hub_cache, TEST_RESNET_HUB_ID, {'model.safetensors': save(weights)})
    return weights


def test_a_model_built_from_imagenet_weights_names_exactly_them_as_base_model(hub_cache, tmp_path):
    weights = _cache_imagenet_test_resnet(hub_cache)
    model = timm.create_model('lfd', pretrained=True, num_classes=3, **HEAD_ARGS).eval()
    # really loaded: the backbone holds the cached weights
    loaded = model.backbone.model.state_dict()
    assert loaded and all(torch.equal(v, weights[k]) for k, v in loaded.items())
    assert model.pretrained_weights == {'source': 'hf-hub', 'id': TEST_RESNET_HUB_ID, 'part': 'backbone'}

    folder = hub.save_pretrained(model, tmp_path / 'export', results=RESULTS)
    config = json.loads((folder / 'config.json').read_text())
    assert config['base_model'] == TEST_RESNET_HUB_ID
    card = ModelCard.load(folder / 'README.md')
    assert card.data.base_model == TEST_RESNET_HUB_ID
    assert (
        f'Fine-tuned from [`{TEST_RESNET_HUB_ID}`]' in card.text
        and '(backbone weights; the head started from random initialisation)' in card.text
    )


def test_a_plain_timm_classifier_is_recorded_by_what_timm_loaded_into_it(hub_cache):
    """The trainer's baseline (`--model test_resnet`) is no head: its record comes from timm's own pretrained_cfg."""
    _cache_imagenet_test_resnet(hub_cache)
    pretrained = timm.create_model('test_resnet', pretrained=True, num_classes=3)
    expected = {'source': 'hf-hub', 'id': TEST_RESNET_HUB_ID, 'part': 'model except classifiers'}
    assert hub.pretrained_weights_of(pretrained, pretrained=True) == expected
    assert hub.pretrained_weights_of(timm.create_model('test_resnet', num_classes=3), pretrained=False) is None


def test_the_trainer_records_what_pretrained_loaded_and_shares_its_weights(hub_cache, tmp_path):
    """`--pretrained` end to end: results.json, config.json and the card name the loaded weights; files are 0644."""
    _cache_imagenet_test_resnet(hub_cache)
    output = tmp_path / 'run'
    command = [sys.executable, '-m', 'fgvc_zoo.train', '--model', 'lfd', '--backbone', 'test_resnet', '--pretrained']
    command += ['--synthetic', '--img-size', '64', '--epochs', '1', '--batch-size', '8', '--workers', '0']
    command += ['--model-args', 'zoom_size=32,num_regions=2,num_hybrid_regions=1', '--output', str(output)]
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(hub_cache), OMP_NUM_THREADS='1')
    old = os.umask(0o022)
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    finally:
        os.umask(old)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {'source': 'hf-hub', 'id': TEST_RESNET_HUB_ID, 'part': 'backbone'}
    assert json.loads((output / 'results.json').read_text())['pretrained_weights'] == expected
    config = json.loads((output / 'config.json').read_text())
    assert config['pretrained_weights'] == expected and config['base_model'] == TEST_RESNET_HUB_ID
    card = ModelCard.load(output / 'README.md')
    assert card.data.base_model == TEST_RESNET_HUB_ID
    assert [r.metric_name for r in card.data.eval_results] == ['top1', 'top5']  # 4 classes: named as results.json
    shared = [output / 'model.safetensors', *(output / 'checkpoints').glob('epoch_*/*.safetensors')]
    assert len(shared) >= 2
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in shared} == {str(p): '0o644' for p in shared}


# ---------------------------------------------------------------------------------------------- Hub cache offline


def test_offline_cache_loads_through_registered_tag_and_hf_hub(exported, hub_cache, monkeypatch):
    model, folder = exported
    _cache_repo(hub_cache, REPO, _folder_files(folder))
    _register_tag(monkeypatch, TAG, REPO)
    x = _images()
    expected = model(x)

    by_tag = timm.create_model(f'lfd.{TAG}', pretrained=True, **HEAD_ARGS).eval()
    by_hub_id = timm.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
    by_load_model = hub.load_model(f'lfd.{TAG}')
    for loaded in (by_tag, by_hub_id, by_load_model):
        assert torch.equal(loaded(x), expected)
        assert hub.model_label_names(loaded) == LABELS
    assert by_hub_id.pretrained_cfg['label_names'] == LABELS


def test_pretrained_with_other_num_classes_keeps_backbone_and_reinitialises_heads(exported, hub_cache, monkeypatch):
    model, folder = exported
    _cache_repo(hub_cache, REPO, _folder_files(folder))
    _register_tag(monkeypatch, TAG, REPO)

    for five in (
        timm.create_model(f'lfd.{TAG}', pretrained=True, num_classes=5, **HEAD_ARGS),
        timm.create_model(f'hf-hub:{REPO}', pretrained=True, num_classes=5),
    ):
        backbone = five.backbone.state_dict()
        assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
        for head in ('image_head', 'region_head', 'hybrid_head'):
            assert getattr(model, head).weight.shape[0] == 3
            assert getattr(five, head).weight.shape[0] == 5
        assert hub.model_label_names(five) is None  # the stored names belong to the 3 old classes


def test_full_weights_from_a_tag_are_recorded_as_the_model_they_came_from(exported, hub_cache, monkeypatch):
    _, folder = exported
    _cache_repo(hub_cache, REPO, _folder_files(folder))
    _register_tag(monkeypatch, TAG, REPO)
    same = timm.create_model(f'lfd.{TAG}', pretrained=True, **HEAD_ARGS)
    assert same.pretrained_weights == {'source': 'hf-hub', 'id': REPO, 'part': 'model'}
    other = timm.create_model(f'lfd.{TAG}', pretrained=True, num_classes=5, **HEAD_ARGS)
    assert other.pretrained_weights == {'source': 'hf-hub', 'id': REPO, 'part': 'model except classifiers'}


def test_pickle_only_repo_in_the_cache_is_refused(exported, hub_cache):
    model, folder = exported
    foreign_config = json.loads((folder / 'config.json').read_text())
    del foreign_config['pretrained_cfg']['hf_hub_filename']  # as another exporter would write it
    _cache_repo(
        hub_cache,
        'someone/pickled',
        {
            'config.json': json.dumps(foreign_config).encode(),
            'pytorch_model.bin': _pickle_bytes(model.state_dict()),
        },
    )
    with pytest.raises(OSError, match=r"'someone/pickled'.*holds only pytorch_model\.bin: fgvc_zoo never loads"):
        hub.load_model('hf-hub:someone/pickled')


def test_plain_timm_hf_hub_refuses_a_pickle_only_repo(exported, hub_cache):
    model, folder = exported
    foreign_config = json.loads((folder / 'config.json').read_text())
    del foreign_config['pretrained_cfg']['hf_hub_filename']
    _cache_repo(
        hub_cache,
        'someone/pickled',
        {
            'config.json': json.dumps(foreign_config).encode(),
            'pytorch_model.bin': _pickle_bytes(model.state_dict()),
        },
    )
    with pytest.raises(OSError, match='pickle'):
        timm.create_model('hf-hub:someone/pickled', pretrained=True)


def test_unknown_repo_offline_names_the_repo_and_the_local_alternatives(hub_cache):
    with pytest.raises(OSError) as error:
        hub.load_model('hf-hub:fgvc-zoo/no_such_model')
    message = str(error.value)
    assert "'fgvc-zoo/no_such_model'" in message and 'HF_HUB_OFFLINE is set' in message
    assert "fgvc_zoo.hub.load_model('path/to/folder')" in message
    assert "pretrained_cfg_overlay=dict(file='path/to/model.safetensors')" in message


def test_tag_whose_repo_holds_another_architecture_is_refused(exported, hub_cache, monkeypatch):
    _, folder = exported
    config = json.loads((folder / 'config.json').read_text())
    config.update(architecture='test_resnet', num_classes=10)
    _cache_repo(hub_cache, 'fgvc-zoo/other', {'config.json': json.dumps(config).encode()})
    _register_tag(monkeypatch, 'other', 'fgvc-zoo/other')
    with pytest.raises(
        ValueError,
        match=r"'fgvc-zoo/other' holds a 'test_resnet' model with num_classes=10, not "
        r"the 'lfd'",
    ):
        hub.load_model('lfd.other')


def test_config_naming_an_unregistered_architecture_says_import_fgvc_zoo(exported):
    _, folder = exported
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, architecture='lfd_from_a_newer_release')))
    with pytest.raises(
        RuntimeError,
        match=r"'lfd_from_a_newer_release' model, which is not registered.*"
        r'`import fgvc_zoo`',
    ):
        hub.load_model(str(folder))


def test_plain_timm_without_import_says_unknown_model_as_the_card_warns(exported):
    """The limit the card and config.json document: timm alone cannot build a head it has never registered."""
    _, folder = exported
    script = f"import timm\ntimm.create_model('local-dir:{folder}', pretrained=True)"
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert 'Unknown model (lfd)' in run.stderr
    assert 'without it timm says "Unknown model"' in (folder / 'README.md').read_text()


# ---------------------------------------------------------------------------------------------- model card


def _front_matter_and_body(card: str):
    assert card.startswith('---\n')
    _, front, body = card.split('---\n', 2)
    return yaml.safe_load(front), body


IMAGENET_WEIGHTS = {'source': 'hf-hub', 'id': 'timm/resnet50.a1_in1k', 'part': 'backbone'}


def _card(architecture: str, backbone: str, results: dict, weights: dict | None = IMAGENET_WEIGHTS, **config) -> str:
    config = {
        'architecture': architecture,
        'num_classes': 200,
        'model_args': {'backbone': backbone},
        'pretrained_cfg': {'input_size': [3, 448, 448], 'license': 'apache-2.0'},
        'pretrained_weights': weights,
        **config,
    }
    return hub.model_card(config, results=results, repo_id=f'fgvc-zoo/{architecture}.cub_200_2011')


def test_card_front_matter_is_a_valid_hub_card_with_accuracies_and_base_model():
    results = dict(RESULTS, metrics={'top1': 86.5, 'top5': 97.25, 'mean_class_accuracy': 85.0, 'loss': 0.61})
    card_text = _card('lfd_resnet50', 'resnet50', results)
    card = ModelCard(card_text)  # huggingface_hub's own parser of the front matter and model-index
    data = card.data.to_dict()
    assert data['pipeline_tag'] == 'image-classification'
    assert data['library_name'] == 'timm' and data['license'] == 'apache-2.0'
    assert {'lfd', 'fgvc', 'image-classification'} <= set(data['tags'])
    assert data['datasets'] == ['cub_200_2011']
    assert data['base_model'] == 'timm/resnet50.a1_in1k'
    model_name, eval_results = model_index_to_eval_results(data['model-index'])
    assert model_name == 'lfd_resnet50.cub_200_2011'
    # accuracies only (the loss is not a result), every one on the image-classification task and the dataset
    assert [(r.metric_name, r.metric_type, r.metric_value) for r in eval_results] == [
        ('top1', 'accuracy', 86.5),
        ('top5', 'accuracy', 97.25),
        ('mean_class_accuracy', 'accuracy', 85.0),
    ]
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in eval_results} == {
        ('image-classification', 'cub_200_2011', 'cub_200_2011')
    }
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        (r.metric_name, r.metric_value) for r in eval_results
    ]
    body = card.text
    # the paper's number beside ours, the exact recipe, usage with the import first, both BibTeX entries
    assert '| top1 | 86.50 | 87.6 (LFD, ResNet-50) |' in body and '| loss | 0.61 | n/a |' in body
    assert '"lr": 0.01' in body
    assert 'import fgvc_zoo' in body and 'timm.create_model("hf-hub:fgvc-zoo/lfd_resnet50.cub_200_2011"' in body
    assert '@inproceedings{feng2019lfd' in body and '@misc{rw2019timm' in body
    assert '## Limitations' in body
    assert 'Fine-tuned from [`timm/resnet50.a1_in1k`](https://huggingface.co/timm/resnet50.a1_in1k)' in body


def test_card_names_top5_as_results_json_does_also_below_5_classes():
    """A 4-class model's top-5 is 100 (every class is among the 5 best): one name in results.json, eval.json,
    metrics.csv, the eval printout and the card, not top5 in some and top4 in others."""
    card = ModelCard(
        _card('lfd_resnet50', 'resnet50', dict(RESULTS, metrics={'top1': 50.0, 'top5': 100.0}), num_classes=4)
    )
    assert [r.metric_name for r in card.data.eval_results] == ['top1', 'top5']
    assert '| top5 | 100.00 | n/a |' in card.text and 'top4' not in card.text


def test_card_without_pretrained_weights_claims_no_base_model():
    card = ModelCard(_card('lfd_resnet50', 'resnet50', RESULTS, weights=None))
    assert card.data.base_model is None and 'base_model' not in card.content.split('---')[1]
    assert 'Trained from random initialisation: no pretrained weights were loaded.' in card.text
    assert 'fine-tuned' not in card.text.lower()


def test_card_of_a_model_whose_start_is_unknown_says_not_recorded():
    # no `pretrained_weights` in config.json: exported from a bare checkpoint without the trainer's results.json
    config = {'architecture': 'lfd_resnet50', 'num_classes': 200, 'model_args': {'backbone': 'resnet50'}}
    card = ModelCard(hub.model_card(config, results=RESULTS))
    assert card.data.base_model is None
    assert 'Where its weights started from was not recorded' in card.text


def test_card_paper_numbers_per_head():
    dpnet = _card('dpnet_resnet50', 'resnet50', dict(RESULTS, metrics={'top1': 84.0}))
    assert (
        '| top1 | 84.00 | 84.9 (DP-Net, ResNet-50, no constraint); 85.0 (DP-Net, ResNet-50, all constraints) |' in dpnet
    )
    iagn = _card('iagn_resnet50', 'resnet50', dict(RESULTS, metrics={'top1': 88.0}))
    assert "reconstructed from the paper's abstract; not the authors' code" in iagn
    assert '| top1 | 88.00 | n/a |' in iagn
    other_backbone = _card('lfd_convnext_tiny', 'convnext_tiny', dict(RESULTS, metrics={'top1': 90.0}))
    assert '| top1 | 90.00 | n/a |' in other_backbone  # the paper reports ResNet-50 only


def test_card_refuses_results_without_metrics():
    with pytest.raises(ValueError, match="results.json needs a 'metrics' mapping"):
        _card('lfd_resnet50', 'resnet50', {'config': {}})


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_export_rewrites_the_card_from_results_json(exported):
    _, folder = exported
    (folder / 'results.json').write_text(json.dumps(dict(RESULTS, metrics={'top1': 12.5})))
    assert cli.run(['export', str(folder), '--repo-id', REPO]) == 0
    meta, body = _front_matter_and_body((folder / 'README.md').read_text())
    assert meta['model-index'][0]['results'][0]['metrics'][0]['value'] == 12.5
    assert f'hf-hub:{REPO}' in body


def test_cli_export_of_a_checkpoint_loads_bit_for_bit(exported, tmp_path):
    model, _ = exported
    checkpoint = tmp_path / 'last.safetensors'
    save_file(model.state_dict(), checkpoint)
    (tmp_path / 'labels.txt').write_text('\n'.join(LABELS))
    out = tmp_path / 'from_checkpoint'
    kwargs = [f'{k}={v!r}' for k, v in HEAD_ARGS.items()]
    assert (
        cli.run(
            [
                'export',
                str(out),
                '--model',
                'lfd',
                '--checkpoint',
                str(checkpoint),
                '--num-classes',
                '3',
                '--label-names',
                str(tmp_path / 'labels.txt'),
                '--model-kwargs',
                *kwargs,
            ]
        )
        == 0
    )
    loaded = hub.load_model(str(out))
    x = _images()
    assert torch.equal(loaded(x), model(x))
    assert hub.model_label_names(loaded) == LABELS


def test_cli_export_of_a_bare_checkpoint_claims_no_provenance_unless_results_json_records_it(exported, tmp_path):
    model, _ = exported
    checkpoint = tmp_path / 'last.safetensors'
    save_file(model.state_dict(), checkpoint)
    kwargs = [f'{k}={v!r}' for k, v in HEAD_ARGS.items()]
    command = ['--model', 'lfd', '--checkpoint', str(checkpoint), '--num-classes', '3', '--model-kwargs', *kwargs]

    bare = tmp_path / 'bare'
    assert cli.run(['export', str(bare), *command]) == 0
    config = json.loads((bare / 'config.json').read_text())
    assert 'pretrained_weights' not in config and 'base_model' not in config
    assert 'was not recorded' in (bare / 'README.md').read_text()

    trained = tmp_path / 'trained'  # a trainer output folder: its results.json says what the run started from
    trained.mkdir()
    record = {'source': 'hf-hub', 'id': TEST_RESNET_HUB_ID, 'part': 'backbone'}
    (trained / 'results.json').write_text(json.dumps(dict(RESULTS, pretrained_weights=record)))
    assert cli.run(['export', str(trained), *command]) == 0
    assert json.loads((trained / 'config.json').read_text())['base_model'] == TEST_RESNET_HUB_ID
    assert ModelCard.load(trained / 'README.md').data.base_model == TEST_RESNET_HUB_ID


def test_push_without_token_says_how_to_get_one(exported, tmp_path, monkeypatch):
    _, folder = exported
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.delenv('HUGGING_FACE_HUB_TOKEN', raising=False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_TOKEN_PATH', str(tmp_path / 'no_token'))
    with pytest.raises(PermissionError, match=r'No Hugging Face token to push .* pass --token .* set HF_TOKEN'):
        hub.push(folder, REPO)


# ---------------------------------------------------------------------------------------------- push to a local Hub

PUSH_AND_LOAD = textwrap.dedent("""
    import json, sys
    import timm
    from safetensors.torch import load_file, save, save_file
    import fgvc_zoo
    from fgvc_zoo import cli, hub

    folder, repo, out = sys.argv[1:]
    assert cli.run(['push', folder, repo, '--private', '--keep-card', out]) == 0
    x = load_file(f'{out}/images.safetensors')['x']
    by_client = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
    by_load_model = hub.load_model(f'hf-hub:{repo}')
    save_file({'client': by_client(x), 'load_model': by_load_model(x)}, f'{out}/logits.safetensors')
    try:
        hub.load_model('hf-hub:someone/pickled')
        pickle_error = None
    except OSError as e:
        pickle_error = str(e)
    json.dump({'labels': hub.model_label_names(by_client), 'pickle_error': pickle_error}, open(f'{out}/out.json', 'w'))
""")


def test_push_to_a_local_hub_then_load_back(exported, tmp_path):
    model, folder = exported
    out = tmp_path / 'out'
    out.mkdir()
    x = _images()
    save_file({'x': x}, out / 'images.safetensors')
    with HubServer(token='hf_test_token') as server:
        server.add_repo(
            'someone/pickled',
            {
                'config.json': (folder / 'config.json').read_bytes(),
                'pytorch_model.bin': _pickle_bytes(model.state_dict()),
            },
        )
        env = dict(
            os.environ,
            HF_ENDPOINT=server.endpoint,
            HF_HUB_OFFLINE='0',
            HF_HOME=str(tmp_path / 'hf_home'),
            HF_TOKEN='hf_test_token',
        )  # reading a private repo back needs the token too
        run = subprocess.run(
            [sys.executable, '-c', PUSH_AND_LOAD, str(folder), REPO, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        create = next(r for r in server.requests if r.path == '/api/repos/create')
        stored = server.repos[REPO]

    create_body = json.loads(create.body)  # huggingface_hub >= 1 sends visibility, older ones a private flag
    assert create_body.get('visibility') == 'private' or create_body.get('private') is True
    assert create.authorization == 'Bearer hf_test_token'
    assert served_files(server, REPO) == ('README.md', 'config.json', 'model.safetensors', 'results.json')
    assert stored.files['model.safetensors'] == (folder / 'model.safetensors').read_bytes()

    meta, body = _front_matter_and_body(stored.files['README.md'].decode())
    metrics = {m['name']: m['value'] for m in meta['model-index'][0]['results'][0]['metrics']}
    assert metrics == {'top1': 66.67, 'top5': 100.0}  # a 3-class model's top5, named as in results.json
    assert '| top1 | 66.67 |' in body and '| top5 | 100.00 |' in body
    assert (out / f'{REPO.replace("/", "--")}.md').read_text() == stored.files['README.md'].decode()

    logits = load_file(out / 'logits.safetensors')
    expected = model(x)
    assert torch.equal(logits['client'], expected) and torch.equal(logits['load_model'], expected)
    result = json.loads((out / 'out.json').read_text())
    assert result['labels'] == LABELS
    assert "Hub repo 'someone/pickled' has no 'model.safetensors'" in result['pickle_error']
    assert 'never a pickle (pytorch_model.bin)' in result['pickle_error']


def test_label_names_of_a_tag_built_model_never_reach_the_network_unless_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    model = timm.create_model('lfd', num_classes=3, **HEAD_ARGS)
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=3, hf_hub_id='fgvc-zoo/nowhere', source='url')
    assert hub.model_label_names(model) is None  # not in the cache: no names, and no download
    with pytest.raises(OSError, match='fgvc-zoo/nowhere'):  # HF_HUB_OFFLINE in tests: asking to download fails
        hub.model_label_names(model, download=True)


PRE_LOGITS = "whose average is the backbone's own pre-logits feature"
REMOVED = 'these were removed, and the head reads the map that average pools'


@pytest.mark.parametrize(
    ('backbone', 'pool', 'words', 'not_words'),
    [
        ('test_resnet', 'avg', PRE_LOGITS, REMOVED),
        ('test_vit', 'token', 'patch tokens', PRE_LOGITS),
        # Average pools followed by layers that act on the pooled vector only (docs/methods.md): those are removed.
        ('mobilenetv3_small_050', 'avg', f'(`conv_head`): {REMOVED}', PRE_LOGITS),
        ('test_mambaout', 'avg', f'(`head`): {REMOVED}', PRE_LOGITS),
    ],
    ids=['resnet', 'vit', 'mobilenetv3', 'mambaout'],
)
def test_the_card_says_what_the_head_reads_of_the_backbone(tmp_path, backbone, pool, words, not_words):
    model = timm.create_model('dpnet', backbone=backbone, num_classes=3).eval()
    folder = hub.save_pretrained(model, tmp_path / backbone, label_names=LABELS)
    assert json.loads((folder / 'config.json').read_text())['backbone_pool'] == pool
    card = (folder / 'README.md').read_text()
    assert words in card and not_words not in card


def test_the_card_of_the_demo_claims_no_pretrained_or_frozen_backbone(tmp_path):
    # The README's demo: DP-Net over a random test_resnet, fine-tuned with the head.
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=3, freeze_backbone=False)
    card = (hub.save_pretrained(model, tmp_path, label_names=LABELS) / 'README.md').read_text()
    prose = card.split('\n# ', 1)[1].split('## Results')[0]  # the introduction and the description
    assert 'Trained from random initialisation' in prose
    sentences = [s for s in re.split(r'(?<=[.;])\s+', ' '.join(prose.split())) if re.search('pretrained|frozen', s)]
    claims = [s for s in sentences if 'paper' not in s and 'no pretrained weights' not in s]
    assert not claims, 'a sentence about this model, not the paper, says its backbone is pretrained or frozen'
