"""`fgvc-zoo demo` in a real browser: headless Chromium (Debian's `chromium`, driven by playwright) uploads photos to
the page served on 127.0.0.1 and reads the top-1 back from it, which must be `fgvc-zoo predict`'s on the same file.

Screenshots go to tests/artifacts/demo/ (or $FGVC_ZOO_TEST_ARTIFACTS/demo/). Without chromium or playwright the
test is skipped on a developer's machine and FAILS in CI (CI=true): .ci/run installs chromium with apt.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
from demo_helpers import export_model, free_port, predict_cli, serving, val_images
from PIL import Image

from fgvc_zoo.demo import find_examples
from fgvc_zoo.models import Lfd

CHROMIUM = os.environ.get('FGVC_ZOO_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
ARTIFACTS = Path(os.environ.get('FGVC_ZOO_TEST_ARTIFACTS') or Path(__file__).parent / 'artifacts') / 'demo'
ANSWER_TIMEOUT_MS = 120_000


def _missing(what: str) -> None:
    message = f'{what}; CI installs it (.ci/run: apt-get install chromium; pip install -e ".[dev]")'
    if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
        pytest.fail(f'{message}: the browser test must run in CI.')
    pytest.skip(message)


@pytest.fixture(scope='module')
def browser():
    if CHROMIUM is None:
        _missing('no chromium on PATH (Debian: apt-get install chromium)')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing('playwright is not installed')
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        yield browser
        browser.close()


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('checkpoints')
    return {'lfd': export_model(root / 'lfd', 'lfd'), 'dpnet': export_model(root / 'dpnet', 'dpnet')}


@pytest.fixture(scope='module')
def demo_url(checkpoints, tmp_path_factory):
    """`fgvc-zoo demo --checkpoint LFD DPNET --port P`, as a person starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp('logs') / 'demo.log'
    command = [sys.executable, '-m', 'fgvc_zoo.cli', 'demo', '--checkpoint', *map(str, checkpoints.values())]
    with serving([*command, '--port', str(port)], port, log) as url:
        yield url


def _two_photos_predict_tells_apart(checkpoint: Path, folder: Path, capsys) -> list[tuple[Path, dict]]:
    """Two images whose top-1 under `fgvc-zoo predict` differs in label or in its shown probability (so a stale page
    cannot pass): validation images, then foolbox's ImageNet photos, which differ more for an untrained model."""
    import foolbox

    photos = sorted(str(p) for p in (Path(foolbox.__file__).parent / 'data').glob('imagenet_*.jpg'))
    chosen: dict[str, str] = {}
    for path in [*val_images(checkpoint), *photos]:
        top1 = predict_cli(path, checkpoint, capsys)
        chosen.setdefault(f'{top1["label"]} ({top1["probability"]:.1%})', path)
    assert len(chosen) >= 2, f'every image has the same top-1 {list(chosen)}: pick another seed'
    photos = []
    for name, path in zip(('first.png', 'second.png'), list(chosen.values())[:2], strict=True):
        Image.open(path).convert('RGB').save(folder / name)
        photos.append((folder / name, predict_cli(str(folder / name), checkpoint, capsys)))
    return photos


def _explanation_src(page) -> str | None:
    return page.evaluate('() => document.querySelector("#explanation img")?.src || null')


def _upload_and_wait(page, path: Path, waiting_for: str) -> str:
    page.set_input_files('#image input[type=file]', str(path))
    return _wait_for_message(page, waiting_for)


def _wait_for_message(page, waiting_for: str) -> str:
    page.wait_for_function(
        'text => (document.querySelector("#message")?.innerText || "").includes(text)',
        arg=waiting_for,
        timeout=ANSWER_TIMEOUT_MS,
    )
    return page.inner_text('#message')


def _wait_for_new_explanation(page, old_src: str | None) -> None:
    page.wait_for_function(
        'old => { const img = document.querySelector("#explanation img");'
        ' return img && img.src !== old && img.complete && img.naturalWidth > 0; }',
        arg=old_src,
        timeout=ANSWER_TIMEOUT_MS,
    )


def _top1_in_page(page) -> str:
    return page.inner_text('#top-classes [data-testid="label-output-value"]').strip()


def test_upload_in_chromium_shows_predicts_top1_explanation_and_legend(
    browser, demo_url, checkpoints, tmp_path, capsys
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    photos = _two_photos_predict_tells_apart(checkpoints['lfd'], tmp_path, capsys)
    page = browser.new_page(viewport={'width': 1400, 'height': 1100})
    page.goto(demo_url, wait_until='domcontentloaded')
    page.wait_for_selector('#image input[type=file]', state='attached', timeout=ANSWER_TIMEOUT_MS)

    for k, (photo, expected) in enumerate(photos):
        old_src = _explanation_src(page)
        message = _upload_and_wait(page, photo, f'for {photo.name}')
        assert _top1_in_page(page) == expected['label'], message
        assert f'Top-1: {expected["label"]} ({expected["probability"]:.1%}) for {photo.name}' in message
        _wait_for_new_explanation(page, old_src)
        assert Lfd.explanation_legend.split(' max-pools')[0] in page.inner_text('#legend')
        page.screenshot(path=str(ARTIFACTS / f'lfd_{k}.png'), full_page=True)

    # an example is one click: the first one is the first validation image of the LFD folder, and the DP-Net
    # folder's copies of the same images are not shown twice
    example = Path(find_examples(str(checkpoints['lfd']))[0])
    assert page.locator('#examples button.gallery-item').count() == len(find_examples(str(checkpoints['lfd'])))
    old_src = _explanation_src(page)
    page.locator('#examples button.gallery-item').first.click()
    message = _wait_for_message(page, f'for {example.name}')
    assert _top1_in_page(page) == predict_cli(str(example), checkpoints['lfd'], capsys)['label'], message
    _wait_for_new_explanation(page, old_src)

    # switch the checkpoint in the page: the current photo is classified again by DP-Net
    dpnet = str(checkpoints['dpnet'])
    expected = predict_cli(str(photos[-1][0]), checkpoints['dpnet'], capsys)
    _upload_and_wait(page, photos[-1][0], f'for {photos[-1][0].name}')  # back to the last photo
    old_src = _explanation_src(page)
    page.click('#checkpoint input')
    page.get_by_role('option', name=dpnet).click()
    message = _wait_for_message(page, f'checkpoint {dpnet}')
    assert _top1_in_page(page) == expected['label'], message
    _wait_for_new_explanation(page, old_src)
    assert 'DP-Net (Discriminative Part Network)' in page.inner_text('#legend')
    page.screenshot(path=str(ARTIFACTS / 'dpnet.png'), full_page=True)

    # a file that is not an image: a message in the page, the old result cleared, the page still answers
    notes = tmp_path / 'notes.png'
    notes.write_text('these are notes, not a picture\n')
    message = _upload_and_wait(page, notes, 'Cannot read notes.png')
    assert 'cannot identify image file' in message and 'Please upload a photo' in message
    assert page.locator('#top-classes [data-testid="label-output-value"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / 'bad_upload.png'), full_page=True)
    photo, _ = photos[0]
    _upload_and_wait(page, photo, f'for {photo.name}')
    assert _top1_in_page(page) == predict_cli(str(photo), checkpoints['dpnet'], capsys)['label']
    print(f'screenshots in {ARTIFACTS}')
