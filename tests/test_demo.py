"""`fgvc-zoo demo` and `fgvc-zoo space` without a browser: what the page answers for every kind of upload, the
Space folder, `python app.py` serving it on 127.0.0.1 through a burst of 50 requests, and `push --space`.

The browser itself is driven in tests/test_demo_browser.py.
"""

import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from importlib import metadata
from importlib.metadata import version
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import yaml
from demo_helpers import (
    BAD_UPLOADS,
    NUM_CLASSES,
    export_model,
    free_port,
    get,
    predict_cli,
    server_env,
    serving,
    val_images,
    write_uploads,
)
from hub_server import HubServer, served_files
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

import fgvc_zoo
from fgvc_zoo import cli
from fgvc_zoo.data import load_image
from fgvc_zoo.demo import SPACE_TORCH, answer, load_demo_model
from fgvc_zoo.errors import UsageError
from fgvc_zoo.inference.explain import explain_images
from fgvc_zoo.models import Lfd

READABLE = ('rgb', 'cmyk', '16bit', 'rgba', 'grayscale', '1x1', 'large')
BAD_REASONS = {'non_image': 'cannot identify image file', 'truncated': 'truncated', 'empty': 'zero-byte file'}
BURST = 50
CI = Path(__file__).resolve().parents[1] / '.ci' / 'run'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return export_model(tmp_path_factory.mktemp('demo') / 'lfd')


@pytest.fixture(scope='module')
def uploads(checkpoint, tmp_path_factory) -> dict[str, Path]:
    return write_uploads(tmp_path_factory.mktemp('uploads'), val_images(checkpoint)[0])


@pytest.fixture(scope='module')
def demo_model(checkpoint):
    return load_demo_model(str(checkpoint))


# ---------------------------------------------------------------------------------------------- what the page answers


@pytest.mark.parametrize('kind', READABLE)
def test_every_readable_upload_gets_predicts_top1_and_the_panels_of_explain(
    kind, uploads, checkpoint, demo_model, capsys
):
    path = uploads[kind]
    result = answer(demo_model, str(path), topk=3)
    expected = predict_cli(str(path), checkpoint, capsys)

    assert list(result.probabilities)[0] == expected['label']
    assert result.probabilities[expected['label']] == pytest.approx(expected['probability'], abs=1e-6)
    assert len(result.probabilities) == 3
    assert result.message.startswith(f'Top-1: **{expected["label"]}** ({expected["probability"]:.1%}) for {path.name}')
    (explained,) = explain_images(
        demo_model.model, [load_image(str(path))], demo_model.transform, demo_model.label_names, view='crop'
    )
    assert result.explanation.size == explained.png_size  # every panel of `fgvc-zoo explain`, at its scale
    # The panel's caption shows the probability of the view predict sees: the same number as the results.
    assert explained.probability == pytest.approx(expected['probability'], abs=1e-6)
    assert Lfd.explanation_legend in result.legend
    assert all(f'. {panel.title}' in result.legend for panel in explained.panels)


def test_the_explanation_is_the_png_of_fgvc_zoo_explain(uploads, checkpoint, demo_model, tmp_path):
    result = answer(demo_model, str(uploads['rgb']))
    out = tmp_path / 'explained.png'
    # the view predict sees: `fgvc-zoo explain --view crop`
    argv = ['explain', str(uploads['rgb']), '--checkpoint', str(checkpoint), '--view', 'crop', '--out', str(out)]
    assert cli.run(argv) == 0
    assert np.array_equal(np.asarray(result.explanation), np.asarray(Image.open(out).convert('RGB')))


@pytest.mark.parametrize('kind', BAD_UPLOADS)
def test_an_unreadable_upload_gets_a_one_line_reason_naming_the_file(kind, uploads, demo_model):
    path = uploads[kind]
    result = answer(demo_model, str(path))
    assert result.probabilities == {} and result.explanation is None and result.legend == ''
    assert result.message.startswith(f'**Cannot read {path.name}**: ')
    assert BAD_REASONS[kind] in result.message and 'Please upload a photo' in result.message
    assert 'BytesIO' not in result.message and '\n' not in result.message


def test_no_upload_yet_says_what_to_do(demo_model):
    assert answer(demo_model, None).message.startswith('No image yet: upload a photo')


# ---------------------------------------------------------------------------------------------- the Space


@pytest.fixture(scope='module')
def space(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('space') / 'my_space'
    assert cli.run(['space', str(checkpoint), str(out)]) == 0
    return out


def _front_matter(readme: str) -> dict:
    assert readme.startswith('---\n')
    return yaml.safe_load(readme.split('---\n')[1])


def test_space_folder_holds_the_app_pinned_requirements_front_matter_model_and_examples(space, checkpoint):
    names = ['README.md', 'app.py', 'examples', 'model', 'requirements.txt', 'wheels']
    assert sorted(p.name for p in space.iterdir()) == names
    # No index has a version before its release: the Space installs the wheel it holds.
    [wheel] = (space / 'wheels').iterdir()
    assert wheel.name.startswith(f'fgvc_zoo-{fgvc_zoo.__version__}-') and wheel.suffix == '.whl'
    assert (space / 'requirements.txt').read_text().splitlines() == [
        '--find-links ./wheels',
        f'fgvc-zoo[demo]=={fgvc_zoo.__version__}',
        *SPACE_TORCH,
    ]
    with zipfile.ZipFile(wheel) as archive:
        assert 'fgvc_zoo/demo.py' in archive.namelist() and 'fgvc_zoo/templates/model_card.md' in archive.namelist()
    meta = _front_matter((space / 'README.md').read_text())
    assert meta['sdk'] == 'gradio' and meta['sdk_version'] == version('gradio') and meta['app_file'] == 'app.py'
    assert sorted(p.name for p in (space / 'model').iterdir()) == ['config.json', 'model.safetensors']
    assert (space / 'model' / 'model.safetensors').read_bytes() == (checkpoint / 'model.safetensors').read_bytes()
    examples = sorted((space / 'examples').iterdir())
    firsts = [min(folder.iterdir()) for folder in sorted((checkpoint / 'synthetic_data' / 'val').iterdir())]
    assert len(examples) == NUM_CLASSES  # one per class
    assert [p.read_bytes() for p in examples] == [p.read_bytes() for p in firsts]
    compile((space / 'app.py').read_text(), 'app.py', 'exec')


def test_pip_installs_the_spaces_wheel_from_any_folder_and_a_tested_torch(space, tmp_path):
    """`pip install -r SPACE/requirements.txt` run from outside the Space, with no index at all, into an
    environment that has a tested torch (its metadata) but no fgvc-zoo: the wheel is the Space's."""
    target = tmp_path / 'env'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(target)], check=True)
    [site] = target.glob('lib/python*/site-packages') or target.glob('Lib/site-packages')
    for name in ('torch', 'torchvision'):
        info = site / f'{name}-{metadata.version(name)}.dist-info'
        info.mkdir()
        (info / 'METADATA').write_text(metadata.distribution(name).read_text('METADATA'))
    python = target / ('Scripts/python.exe' if sys.platform == 'win32' else 'bin/python')
    requirements = space.relative_to(space.parent.parent) / 'requirements.txt'
    command = [sys.executable, '-m', 'pip', '--python', str(python), 'install', '--no-index', '--no-deps', '--dry-run']
    resolved = subprocess.run(
        [*command, '-r', str(requirements)], cwd=space.parent.parent, capture_output=True, text=True
    )
    assert resolved.returncode == 0 and f'Would install fgvc-zoo-{fgvc_zoo.__version__}' in resolved.stdout, resolved
    for requirement in SPACE_TORCH:  # the torch CI tests newest is in the range, the next minor release is not
        specifier = Requirement(requirement).specifier
        newest = Version(re.search(rf'"{Requirement(requirement).name}==([\d.]+)"', CI.read_text()).group(1))
        assert newest in specifier and Version(f'{newest.major}.{newest.minor + 1}') not in specifier


def test_space_refuses_a_non_empty_folder_and_a_model_without_examples(space, checkpoint, tmp_path):
    with pytest.raises(UsageError, match='exists and is not empty'):
        cli.run(['space', str(checkpoint), str(space)])
    bare = tmp_path / 'bare'
    bare.mkdir()
    for name in ('model.safetensors', 'config.json'):
        (bare / name).write_bytes((checkpoint / name).read_bytes())
    with pytest.raises(UsageError, match='pass --examples IMAGE'):
        cli.run(['space', str(bare), str(tmp_path / 'out')])
    with pytest.raises(UsageError, match=r'--examples .*notes\.png: .*Pass image files'):
        cli.run(['space', str(bare), str(tmp_path / 'out'), '--examples', str(_text_file(tmp_path))])


def _text_file(folder: Path) -> Path:
    path = folder / 'notes.png'
    path.write_text('not an image')
    return path


@pytest.fixture(scope='module')
def space_app(space, tmp_path_factory):
    """`python app.py` of the Space, run from its folder as the Hub runs it, on a free port of 127.0.0.1."""
    port = free_port()
    log = tmp_path_factory.mktemp('logs') / 'space_app.log'
    env = server_env(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME='127.0.0.1')
    with serving([sys.executable, str(space / 'app.py')], port, log, env=env, cwd=space) as url:
        yield url


def test_space_app_serves_its_page(space_app):
    status, html = get(space_app)
    assert status == 200
    assert 'lfd: what it looks at' in html  # the title `fgvc-zoo space` gave the page


def test_burst_of_50_requests_some_bad_every_good_one_answered(space_app, checkpoint, uploads, capsys):
    from gradio_client import Client, handle_file

    goods = val_images(checkpoint)
    expected = {path: predict_cli(path, checkpoint, capsys)['label'] for path in goods}
    sequence = [str(uploads[BAD_UPLOADS[k // 4 % 3]]) if k % 4 == 3 else goods[k % len(goods)] for k in range(BURST)]
    # Workers for every job in flight: gradio_client up to 2.6.0 runs each job's helpers on the pool the job holds,
    # so a burst beyond about max_workers / 3 jobs deadlocks the client, not the server under test (fixed after
    # 2.6.0 by gradio-app/gradio#13760; gradio 6.0's client is 2.0).
    client = Client(space_app, verbose=False, max_workers=4 * BURST)
    jobs = [client.submit(handle_file(path), 'lfd', api_name='/classify') for path in sequence]
    results = [job.result(timeout=300) for job in jobs]

    bad = {str(uploads[kind]) for kind in BAD_UPLOADS}
    assert 0 < sum(path in bad for path in sequence) < BURST
    for path, (top, explanation, legend, message) in zip(sequence, results, strict=True):
        if path in bad:
            assert not top and explanation is None and legend == ''  # the label is cleared
            assert message.startswith(f'**Cannot read {Path(path).name}**'), message
        else:
            assert top['label'] == expected[path], (path, message)
            assert message.startswith(f'Top-1: **{expected[path]}**') and Path(explanation).is_file()
            assert Lfd.explanation_legend in legend
    assert get(space_app)[0] == 200  # still serving


def test_a_request_naming_a_file_on_the_server_is_refused_before_the_model_reads_it(space_app, checkpoint):
    """The page takes uploads unprocessed (preprocess=False); gradio must still refuse paths nobody uploaded."""
    secret = checkpoint / 'synthetic_data' / 'val' / 'hbar' / '0000.png'  # a readable image the server can see
    body = json.dumps({'data': [{'path': str(secret), 'meta': {'_type': 'gradio.FileData'}}, 'lfd']}).encode()
    request = urllib.request.Request(
        f'{space_app}gradio_api/call/classify', data=body, headers={'Content-Type': 'application/json'}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)['event_id']
    status, stream = get(f'{space_app}gradio_api/call/classify/{event_id}')
    assert status == 200
    assert stream.startswith('event: error') and 'Top-1' not in stream


# ---------------------------------------------------------------------------------------------- push --space


def test_push_space_to_a_local_hub(space, monkeypatch, capsys):
    repo = 'someone/lfd-demo'
    with HubServer(token='hf_test_token') as server:
        # huggingface_hub reads its endpoint and offline flag into constants at import: point those at the test Hub
        monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', server.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
        monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
        assert cli.run(['push', str(space), repo, '--space']) == 0
        create = next(r for r in server.requests if r.path == '/api/repos/create')

    assert json.loads(create.body)['type'] == 'space' and json.loads(create.body)['sdk'] == 'gradio'
    assert create.authorization == 'Bearer hf_test_token'
    assert server.repos[repo].kind == 'space'
    local = sorted(str(p.relative_to(space)) for p in space.rglob('*') if p.is_file())
    assert list(served_files(server, repo)) == local
    assert server.repos[repo].files['model/model.safetensors'] == (space / 'model' / 'model.safetensors').read_bytes()
    assert f'Pushed the Space {space} to {server.endpoint}/' in capsys.readouterr().out


def test_push_space_refuses_a_folder_that_is_not_a_space(checkpoint):
    with pytest.raises(UsageError, match=r'is not a Space folder \(no app\.py, requirements\.txt'):
        cli.run(['push', str(checkpoint), 'someone/x', '--space'])


def test_gradio_is_imported_only_when_a_page_is_built():
    code = 'import sys, fgvc_zoo.demo; print(sorted(m for m in sys.modules if m.split(".")[0] == "gradio"))'
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=server_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == '[]'


def test_demo_cli_is_registered_with_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(['demo', '--help'])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ('--checkpoint', '--port', '--share, --no-share', '--examples', '--topk', '--host'):
        assert option in help_text


def test_examples_of_a_run_on_its_own_data_come_from_its_val_folder(tmp_path):
    from fgvc_zoo.demo import find_examples

    data = tmp_path / 'my_data'
    for name in ('zebra', 'horse'):
        (data / 'val' / name).mkdir(parents=True)
        (data / 'val' / name / 'broken.jpg').write_bytes(b'not an image')  # sorted first, skipped
        Image.new('RGB', (8, 8)).save(data / 'val' / name / 'photo.png')
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'results.json').write_text(json.dumps({'dataset': {'root': str(data)}, 'config': {'val_split': 'val'}}))
    assert find_examples(str(run)) == [str(data / 'val' / n / 'photo.png') for n in ('horse', 'zebra')]
