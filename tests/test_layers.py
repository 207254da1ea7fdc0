"""The package's layers import downward only: the models never reach the trainer, the Hub glue or the tools."""

import ast
from pathlib import Path

import pytest

import fgvc_zoo

PACKAGE = Path(fgvc_zoo.__file__).parent
# What each lower layer may import from fgvc_zoo (itself included); anything else of fgvc_zoo is above it.
ALLOWED = {
    'models': ('fgvc_zoo.models', 'fgvc_zoo.layers', 'fgvc_zoo.errors'),
    'layers': ('fgvc_zoo.layers',),
}


def _module_name(path: Path) -> str:
    return '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)


def _fgvc_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every fgvc_zoo module that `path` (the module `module`) imports, relative imports resolved, by line."""
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{parent}.{base}' if base else parent
            found += (
                [(node.lineno, base)]
                if base != 'fgvc_zoo'
                else [(node.lineno, f'fgvc_zoo.{a.name}') for a in node.names]
            )
    return [(line, name) for line, name in found if name == 'fgvc_zoo' or name.startswith('fgvc_zoo.')]


def _is_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or name.startswith(a + '.') for a in allowed)


@pytest.mark.parametrize('layer', sorted(ALLOWED))
def test_lower_layers_import_nothing_above_them(layer):
    files = sorted((PACKAGE / layer).rglob('*.py'))
    assert files, f'no modules under fgvc_zoo/{layer}'
    upward = [
        f'{path.relative_to(PACKAGE.parent)}:{line} imports {name}'
        for path in files
        for line, name in _fgvc_imports(path, _module_name(path))
        if not _is_allowed(name, ALLOWED[layer])
    ]
    assert not upward, 'imports above the layer:\n' + '\n'.join(upward)


def test_the_import_check_sees_relative_and_absolute_imports(tmp_path):
    # The check itself can fail: a models-level file importing the hub both ways is caught twice.
    path = tmp_path / 'probe.py'
    path.write_text('import torch\nfrom ..hub import hub_cfg\nimport fgvc_zoo.train\nfrom fgvc_zoo import explain\n')
    names = [name for _, name in _fgvc_imports(path, 'fgvc_zoo.models.probe')]
    assert names == ['fgvc_zoo.hub', 'fgvc_zoo.train', 'fgvc_zoo.explain']
    assert not any(_is_allowed(n, ALLOWED['models']) for n in names)


def test_min_max_scale_scales_each_map_to_0_1_and_a_constant_map_to_zeros():
    import torch

    from fgvc_zoo.layers import min_max_scale

    maps = torch.stack([torch.tensor([[1.0, 3.0], [5.0, 9.0]]), torch.full((2, 2), 7.0)]).unsqueeze(0)  # (1, 2, 2, 2)
    scaled = min_max_scale(maps)
    torch.testing.assert_close(scaled[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(scaled[0, 1], torch.zeros(2, 2))  # per map: the constant one has no range, not NaN
