"""The package is built in floors: every module imports only from the floors below its own and from its own room
(the package or module it belongs to), imports inside functions included, so there is no import cycle and a new
command or a new head touches one room. The rules read the source with `ast`; each is shown able to fail on a probe.
"""

import ast
from pathlib import Path

import pytest

import fgvc_zoo

PACKAGE = Path(fgvc_zoo.__file__).parent
# Lowest first. A room is a subpackage or a top-level module; each room is on exactly one floor.
FLOORS = (
    ('fgvc_zoo.errors',),
    ('fgvc_zoo.layers',),
    ('fgvc_zoo.models', 'fgvc_zoo.data'),
    ('fgvc_zoo.hub', 'fgvc_zoo.convert'),  # the export format: folder, card, ONNX, upload; foreign weights converted
    ('fgvc_zoo.runtime',),  # threads, device, option syntax, a model loaded for inference
    ('fgvc_zoo.training', 'fgvc_zoo.inference'),
    ('fgvc_zoo.demo', 'fgvc_zoo.bench', 'fgvc_zoo.compare'),
    ('fgvc_zoo.commands',),
    ('fgvc_zoo.cli', 'fgvc_zoo.train'),
)
ROOT = 'fgvc_zoo'  # the package itself: its version and lazy names (below every floor)
# What importing the root imports: the models, which register the heads with timm (at once when timm is loaded,
# else right after timm's import, through an import hook). Any other room it imports only in `__getattr__`, on use.
REGISTRATION = 'fgvc_zoo.models'
LAZY_NAMES = '__getattr__'
SHARED_COMMAND_MODULE = 'fgvc_zoo.commands.common'


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob('*.py'))}


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, str]]:
    """(line, imported fgvc_zoo module, imported name or '') of every import in `source`, relative ones resolved,
    `importlib.import_module('fgvc_zoo.x')` with a literal name included.

    `from fgvc_zoo.x import y` is recorded as module `fgvc_zoo.x.y` when that is a module, else `fgvc_zoo.x` with
    the name `y`; so importing a submodule counts as importing it.
    """
    modules = _modules()
    package = module if is_package else module.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, '') for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{parent}.{base}' if base else parent
            for alias in node.names:
                submodule = f'{base}.{alias.name}'
                found.append((node.lineno, submodule, '') if submodule in modules else (node.lineno, base, alias.name))
        elif isinstance(node, ast.Call) and _called_name(node.func) == 'import_module' and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, ''))
    return [(line, name, what) for line, name, what in found if name == ROOT or name.startswith(ROOT + '.')]


def _called_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ''


def _lazy_lines(source: str) -> set[int]:
    """The lines of the root's `__getattr__` (its lazy names)."""
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == LAZY_NAMES]
    return {line for f in functions for line in range(f.lineno, f.end_lineno + 1)}


def room(module: str) -> str:
    """The room of a module: `fgvc_zoo.training.loop` -> `fgvc_zoo.training`, `fgvc_zoo.cli` -> itself."""
    return '.'.join(module.split('.')[:2])


def floor(module: str) -> int | None:
    """The floor of a module's room, -1 for the package root, None for a room on no floor."""
    if module == ROOT:
        return -1
    return next((level for level, rooms in enumerate(FLOORS) if room(module) in rooms), None)


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every broken rule of one module, one line each."""
    found = []
    if floor(module) is None:
        found.append(f'{module} is on no floor: add its room to FLOORS in tests/test_layers.py')
    lazy = _lazy_lines(source) if module == ROOT else set()
    for line, target, name in imports(source, module, is_package):
        where = f'{module}:{line} imports {target}{"." + name if name else ""}'
        same_room = room(target) == room(module) and target != ROOT
        if module == ROOT and target not in (ROOT, REGISTRATION) and line not in lazy:
            found.append(f'{where}: the package root imports no room but {REGISTRATION} (other names load lazily)')
        elif module != ROOT and not same_room and floor(target) is not None and floor(module) is not None:
            if floor(target) >= floor(module):
                found.append(f'{where}: not below its floor')
        if room(module) == 'fgvc_zoo.commands' and same_room and SHARED_COMMAND_MODULE not in (target, module):
            if target != 'fgvc_zoo.commands':
                found.append(f'{where}: commands share only {SHARED_COMMAND_MODULE}')
        private_module = any(part.startswith('_') for part in target.split('.')[2:])
        private = private_module or (name.startswith('_') and not name.startswith('__'))
        if not same_room and private:
            found.append(f'{where}: a private name of another room')
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the fgvc_zoo modules it imports (in functions too); a package's own submodules excluded, but for
    the root, whose submodules are the rooms."""
    graph = {}
    for module, path in _modules().items():
        targets = {target for _, target, _ in imports(path.read_text(), module, path.name == '__init__.py')}
        graph[module] = {t for t in targets if t != module and (module == ROOT or not t.startswith(module + '.'))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


@pytest.mark.parametrize('module', sorted(_modules()))
def test_every_module_imports_only_below_its_floor(module):
    path = _modules()[module]
    assert not violations(module, path.read_text(), path.name == '__init__.py')


def test_every_room_of_the_package_is_on_a_floor():
    rooms = {room(m) for m in _modules()} - {ROOT}
    placed = {r for rooms_of_floor in FLOORS for r in rooms_of_floor}
    assert rooms == placed


@pytest.mark.parametrize('module', sorted(m for m in _modules() if room(m) in ('fgvc_zoo.errors', 'fgvc_zoo.layers')))
def test_what_the_models_import_below_them_never_imports_timm(module):
    # The registration hook (fgvc_zoo/__init__.py) imports fgvc_zoo.models right after timm: a module it needs may
    # not be the one whose import of timm set it off, half-executed.
    tree = ast.parse(_modules()[module].read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
    assert not [n for n in names if n == 'timm' or n.startswith('timm.')]


def test_there_is_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) == []


@pytest.mark.parametrize(
    ('module', 'source', 'broken'),
    [
        ('fgvc_zoo.models.probe', 'from ..hub import load_model', 'not below its floor'),
        ('fgvc_zoo.models.probe', 'def f():\n    import fgvc_zoo.training.loop', 'not below its floor'),
        ('fgvc_zoo.models.probe', 'from fgvc_zoo import cli', 'not below its floor'),
        ('fgvc_zoo.training.probe', 'from ..inference.evaluate import evaluate', 'not below its floor'),
        ('fgvc_zoo.data.probe', 'from ..models import Lfd', 'not below its floor'),
        ('fgvc_zoo.commands.probe', 'from .train import main', f'commands share only {SHARED_COMMAND_MODULE}'),
        ('fgvc_zoo.commands.probe', 'from . import explain', f'commands share only {SHARED_COMMAND_MODULE}'),
        ('fgvc_zoo.inference.probe', 'from ..training.checkpoints import find_resume', 'not below its floor'),
        ('fgvc_zoo.hub.probe', 'from ..models._registry import register_head', 'a private name of another room'),
        ('fgvc_zoo.cli', 'from .training.loop import _export', 'a private name of another room'),
        ('fgvc_zoo', 'from .hub import load_model', 'the package root imports no room but'),
        (
            'fgvc_zoo',
            'import importlib\nimportlib.import_module("fgvc_zoo.hub")',
            'the package root imports no room but',
        ),
        ('fgvc_zoo.models.probe', 'import importlib\nimportlib.import_module("fgvc_zoo.hub")', 'not below its floor'),
        ('fgvc_zoo.tools.probe', 'import os', 'is on no floor'),
    ],
)
def test_each_rule_can_fail(module, source, broken):
    assert any(broken in v for v in violations(module, source)), violations(module, source)


@pytest.mark.parametrize(
    ('module', 'source'),
    [
        ('fgvc_zoo.training.probe', 'from ..hub import save_pretrained\nfrom .checkpoints import _lock'),
        ('fgvc_zoo.commands.probe', 'from .common import ArgumentParser\ndef main():\n    from ..training import loop'),
        ('fgvc_zoo.models.probe', 'from ._registry import _HEADS\nfrom ..layers.cam import upsample_maps'),
        ('fgvc_zoo', 'import importlib\nimportlib.import_module("fgvc_zoo.models")'),
        ('fgvc_zoo', 'import importlib\ndef __getattr__(name):\n    return importlib.import_module("fgvc_zoo.cli")'),
    ],
)
def test_downward_imports_and_private_names_within_a_room_pass(module, source):
    assert violations(module, source) == []


def test_importing_the_package_imports_the_models_which_register_the_heads():
    # fgvc_zoo/__init__.py registers the heads through importlib (at once, or from the hook after timm's import):
    # the floor rules and the cycle search see that edge like any import statement.
    assert REGISTRATION in import_graph()[ROOT]


def test_the_cycle_search_finds_a_cycle_through_a_function_import():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'd': {'a', 'b'}}) == []
    probe = imports('def f():\n    from ..hub import load_model\n', 'fgvc_zoo.models.probe')
    assert [target for _, target, _ in probe] == ['fgvc_zoo.hub']


def test_min_max_scale_scales_each_map_to_0_1_and_a_constant_map_to_zeros():
    import torch

    from fgvc_zoo.layers import min_max_scale

    maps = torch.stack([torch.tensor([[1.0, 3.0], [5.0, 9.0]]), torch.full((2, 2), 7.0)]).unsqueeze(0)  # (1, 2, 2, 2)
    scaled = min_max_scale(maps)
    torch.testing.assert_close(scaled[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(scaled[0, 1], torch.zeros(2, 2))  # per map: the constant one has no range, not NaN
