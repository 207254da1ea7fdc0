"""Release metadata: what the wheel ships, the dependency bounds against the pair CI installs, one version source.

The end-to-end check, the built wheel alone in a fresh venv outside the checkout, is `.ci/wheel_check.sh`.
"""

import fnmatch
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from requirements_check import require

import fgvc_zoo
from fgvc_zoo import hub

# tomllib is the standard library's from Python 3.11; on 3.10 its backport tomli (a dev extra there).
tomllib = require('tomllib' if sys.version_info >= (3, 11) else 'tomli', 'the packaging tests read pyproject.toml')
REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())


def _requirements() -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in PYPROJECT['project']['dependencies']}


def test_every_non_python_file_of_the_package_is_declared_package_data():
    """A file the runtime reads but the wheel lacks breaks only after `pip install` (the card template did)."""
    patterns = PYPROJECT['tool']['setuptools']['package-data']['fgvc_zoo']
    package = REPO / 'fgvc_zoo'
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob('*')
        if p.is_file() and p.suffix not in ('.py', '.pyc') and '__pycache__' not in p.parts
    ]
    assert 'templates/model_card.md' in data
    assert [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)] == []


def test_the_card_template_is_read_from_the_package():
    assert hub.read_template().startswith('---\n${front_matter}\n---')


def _lowest_pins() -> dict[str, str]:
    lines = (REPO / '.ci' / 'lowest-constraints.txt').read_text().splitlines()
    pins = [Requirement(line) for line in lines if line and not line.startswith('#')]
    return {canonicalize_name(r.name): str(r.specifier)[2:] for r in pins}


def test_every_lower_bound_is_the_version_the_lowest_ci_venv_pins():
    requirements = _requirements()
    optional = PYPROJECT['project']['optional-dependencies']
    requirements.update((r.name, r) for r in map(Requirement, optional['dev'] + optional['onnx'] + optional['demo']))
    assert [str(r) for r in _requirements().values() if any(s.operator == '==' for s in r.specifier)] == []
    pins = _lowest_pins()
    for name in [*_requirements(), 'gradio', 'onnx', 'onnxruntime']:
        [bound] = [s.version for s in requirements[name].specifier if s.operator == '>=']
        assert Version(bound) == Version(pins[canonicalize_name(name)]), (
            f'pyproject {name}>={bound}, but .ci/lowest-constraints.txt tests {name}=={pins[canonicalize_name(name)]}'
        )


def test_ci_builds_the_newest_and_the_lowest_venv_and_the_readme_installs_the_newest_pair():
    ci = (REPO / '.ci' / 'run').read_text()
    assert '-c .ci/lowest-constraints.txt' in ci
    newest = re.search(r'NEWEST=\((.*)\)', ci).group(1).split()
    readme = (REPO / 'README.md').read_text()
    for pin in newest:
        assert readme.count(pin) >= 2, f'the README set-up lines do not install {pin}, the newest pair CI tests'


def test_the_timm_suite_counts_are_printed_by_ci_not_copied_into_the_docs():
    """They change with every timm and every head: a copy in docs/architecture.md goes stale."""
    docs = (REPO / 'docs' / 'architecture.md').read_text()
    contract = docs[docs.index('## The timm contract') :].split('\n## ')[0]
    assert re.findall(r'\d+ (?:of its tests|pass|are excluded|fail)', contract) == []
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'tests/test_models.py" | tee "$timm_src/summary.log"' in ci
    assert 'over fgvc_zoo\'s models: $(tail -n 1 "$timm_src/summary.log")' in ci


def _top_level_modules(distribution: str) -> set[str]:
    """The modules an installed distribution provides, from its files (Python 3.10's `packages_distributions` reads
    only top_level.txt, which wheels built by hatchling, gradio's among them, do not have); none if not installed."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return set()
    tops = {f.parts[0] for f in files if len(f.parts) > 1 or f.suffix == '.py'}
    return {
        t.removesuffix('.py')
        for t in tops
        if not t.endswith(('.dist-info', '.data')) and t not in ('..', '__pycache__')
    }


def test_the_readme_demo_installs_the_package_alone_and_runs_without_any_dev_extra(tmp_path):
    """A one-minute demo need not fetch pytest, gradio, onnxruntime, playwright (GBs with a CUDA torch): its set-up
    line installs `-e .`, the test line `.[dev]`; and the demo recipe, then its predict line, run with every
    module of the dev extra unimportable."""
    lines = [line for line in (REPO / 'README.md').read_text().splitlines() if line.startswith('python3 -m venv')]
    [demo] = [line for line in lines if 'demo_cpu.yaml' in line]
    [tests] = [line for line in lines if 'pytest' in line]
    assert ' -e . && ' in demo and '[dev]' not in demo and ' -e ".[dev]" && ' in tests
    dev = {canonicalize_name(Requirement(r).name) for r in PYPROJECT['project']['optional-dependencies']['dev']}
    blocked = set().union(*(_top_level_modules(name) for name in dev))
    assert {'pytest', 'gradio', 'onnxruntime'} <= blocked
    script = (  # the path finder finds no module of the dev extra, as in a venv without it
        'import sys\nfrom importlib.machinery import PathFinder\n'
        'class NoDevExtra(PathFinder):\n'
        '    @classmethod\n'
        '    def find_spec(cls, name, path=None, target=None):\n'
        '        if name.partition(".")[0] not in sys.argv[1].split(","):\n'
        '            return super().find_spec(name, path, target)\n'
        'sys.meta_path[sys.meta_path.index(PathFinder)] = NoDevExtra\n'
        'from fgvc_zoo.cli import main\n'
        'main(sys.argv[2:])\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    output = tmp_path / 'out' / 'demo'
    example = output / 'synthetic_data' / 'val' / 'cross' / '0000.png'
    for argv in (
        ['train', '--recipe', str(REPO / 'train_scripts' / 'demo_cpu.yaml'), '--output', str(output), '--epochs', '1'],
        ['predict', '--checkpoint', str(output), '--topk', '3', str(example)],
    ):
        command = [sys.executable, '-c', script, ','.join(sorted(blocked)), *argv]
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]


def test_timm_has_an_upper_bound_while_a_private_timm_api_is_imported():
    private = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / 'fgvc_zoo').rglob('*.py')
        if re.search(r'from timm\.\w+\._\w+ import|import timm\.\w+\._', p.read_text())
    ]
    uppers = [s for s in _requirements()['timm'].specifier if s.operator == '<']
    assert private and uppers, f'private timm imports in {private} need a timm upper bound'


def test_one_version_source_and_the_license():
    assert 'version' not in PYPROJECT['project'] and 'version' in PYPROJECT['project']['dynamic']
    assert PYPROJECT['tool']['setuptools']['dynamic']['version'] == {'attr': 'fgvc_zoo.__version__'}
    assert re.fullmatch(r'\d+\.\d+\.\d+', fgvc_zoo.__version__)
    assert PYPROJECT['project']['license'] == 'Apache-2.0'
    assert 'Apache License\n                           Version 2.0' in (REPO / 'LICENSE').read_text()
