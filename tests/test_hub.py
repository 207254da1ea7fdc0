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
from safetensors.torch import load_file, save_file
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
    # backbone and head options, tuples as JSON lists, nothing about where weights came from
    assert config['model_args'] == dict(HEAD_ARGS, num_classes=3, region_sizes=[0.5])
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 448, 448]
    assert cfg['mean'] == [0.5, 0.5, 0.5] and cfg['std'] == [0.5, 0.5, 0.5]  # test_resnet's normalisation
    assert cfg['crop_pct'] == 0.875 and cfg['crop_mode'] == 'center'
    assert cfg['hf_hub_filename'] == 'model.safetensors'
    assert config['base_model'] == 'timm/test_resnet.r160_in1k'
    assert 'import fgvc_zoo' in config['requires']
    weights = load_file(folder / 'model.safetensors')
    assert weights.keys() == model.state_dict().keys()


def test_local_export_loads_bit_for_bit_with_label_names(exported):
    model, folder = exported
    x = _images()
    expected = model(x)
    for loaded in (hub.load_model(str(folder)), timm.create_model(f'local-dir:{folder}', pretrained=True).eval()):
        assert torch.equal(loaded(x), expected)
        assert hub.label_names(loaded) == LABELS


@pytest.mark.parametrize('head', ['dpnet', 'iagn'])
def test_every_head_round_trips_through_an_export(head, tmp_path):
    model = timm.create_model(head, backbone='test_resnet', num_classes=3).eval()
    folder = hub.save_pretrained(model, tmp_path / head, label_names=LABELS)
    loaded = hub.load_model(str(folder))
    x = _images()
    assert torch.equal(loaded(x), model(x))
    assert hub.label_names(loaded) == LABELS
    assert head in yaml.safe_load((folder / 'README.md').read_text().split('---\n')[1])['tags']


def test_local_folder_with_only_a_pickle_is_refused(exported):
    model, folder = exported
    (folder / 'model.safetensors').unlink()
    (folder / 'pytorch_model.bin').write_bytes(_pickle_bytes(model.state_dict()))
    with pytest.raises(FileNotFoundError, match=r'no model\.safetensors \(it holds pytorch_model\.bin, which'):
        hub.load_model(str(folder))


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
        assert hub.label_names(loaded) == LABELS
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
        assert hub.label_names(five) is None  # the stored names belong to the 3 old classes


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


def _card(architecture: str, backbone: str, results: dict) -> str:
    config = {
        'architecture': architecture,
        'num_classes': 200,
        'model_args': {'backbone': backbone},
        'pretrained_cfg': {'input_size': [3, 448, 448], 'license': 'apache-2.0'},
        'base_model': f'timm/{backbone}.a1_in1k',
    }
    return hub.model_card(config, results=results, repo_id=f'fgvc-zoo/{architecture}.cub_200_2011')


def test_card_front_matter_has_model_index_of_results_and_base_model():
    results = dict(RESULTS, metrics={'top1': 86.5, 'loss': 0.61})
    meta, body = _front_matter_and_body(_card('lfd_resnet50', 'resnet50', results))
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert {'lfd', 'fgvc', 'image-classification'} <= set(meta['tags'])
    assert meta['datasets'] == ['cub_200_2011']
    assert meta['base_model'] == 'timm/resnet50.a1_in1k'
    [result] = meta['model-index'][0]['results']
    assert result['metrics'] == [
        {'type': 'accuracy', 'value': 86.5, 'name': 'top1'},
        {'type': 'loss', 'value': 0.61, 'name': 'loss'},
    ]
    assert result['dataset'] == {'name': 'cub_200_2011', 'type': 'cub_200_2011'}
    # the paper's number beside ours, the exact recipe, usage with the import first, both BibTeX entries
    assert '| top1 | 86.50 | 87.6 (LFD, ResNet-50) |' in body and '| loss | 0.61 | n/a |' in body
    assert '"lr": 0.01' in body
    assert 'import fgvc_zoo' in body and 'timm.create_model("hf-hub:fgvc-zoo/lfd_resnet50.cub_200_2011"' in body
    assert '@inproceedings{feng2019lfd' in body and '@misc{rw2019timm' in body
    assert '## Limitations' in body


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
    assert hub.label_names(loaded) == LABELS


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
    from safetensors.torch import load_file, save_file
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
    json.dump({'labels': hub.label_names(by_client), 'pickle_error': pickle_error}, open(f'{out}/out.json', 'w'))
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

    assert json.loads(create.body)['visibility'] == 'private'
    assert create.authorization == 'Bearer hf_test_token'
    assert served_files(server, REPO) == ('README.md', 'config.json', 'model.safetensors', 'results.json')
    assert stored.files['model.safetensors'] == (folder / 'model.safetensors').read_bytes()

    meta, body = _front_matter_and_body(stored.files['README.md'].decode())
    metrics = {m['name']: m['value'] for m in meta['model-index'][0]['results'][0]['metrics']}
    assert metrics == RESULTS['metrics']
    assert '| top1 | 66.67 |' in body and '| top5 | 100.00 |' in body
    assert (out / f'{REPO.replace("/", "--")}.md').read_text() == stored.files['README.md'].decode()

    logits = load_file(out / 'logits.safetensors')
    expected = model(x)
    assert torch.equal(logits['client'], expected) and torch.equal(logits['load_model'], expected)
    result = json.loads((out / 'out.json').read_text())
    assert result['labels'] == LABELS
    assert "Hub repo 'someone/pickled' has no 'model.safetensors'" in result['pickle_error']
    assert 'never a pickle (pytorch_model.bin)' in result['pickle_error']
