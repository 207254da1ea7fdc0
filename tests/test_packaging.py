"""Release metadata: what the wheel ships, the dependency bounds against the pair CI installs, one version source.

The end-to-end check, the built wheel alone in a fresh venv outside the checkout, is `.ci/wheel_check.sh`.
"""

import fnmatch
import re
from pathlib import Path

from packaging.requirements import Requirement
from requirements_check import require

import fgvc_zoo
from fgvc_zoo import hub

tomllib = require('tomllib', 'the packaging tests read pyproject.toml with it (standard library from Python 3.11)')
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


def test_runtime_dependencies_are_lower_bounds_met_by_the_pair_ci_installs():
    requirements = _requirements()
    assert [str(r) for r in requirements.values() if any(s.operator == '==' for s in r.specifier)] == []
    ci = (REPO / '.ci' / 'run').read_text()
    for name in ('torch', 'torchvision'):
        [pinned] = re.findall(rf'"{name}==([\d.]+)"', ci)
        [bound] = [s.version for s in requirements[name].specifier if s.operator == '>=']
        assert bound == pinned, f'pyproject {name}>={bound} is not the pair .ci/run tests ({name}=={pinned})'


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
