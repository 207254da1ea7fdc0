"""What `benchmarks/` publishes names no machine: run records, reports and results give paths relative to their
output folder, and external files by name plus sha256 or by their source (issue 33)."""

import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
# A home or work folder of the machine a benchmark ran on; /tmp in an example command is a placeholder anyone has.
MACHINE_PATH = re.compile(r'/(root|work|home|Users)/')
PUBLISHED = sorted(p for p in BENCHMARKS.rglob('*') if p.suffix in ('.json', '.md', '.py', '.txt', '.csv'))


def test_there_are_records_to_check() -> None:
    assert any(p.suffix == '.json' for p in PUBLISHED) and any(p.suffix == '.md' for p in PUBLISHED)


@pytest.mark.parametrize('path', PUBLISHED, ids=[str(p.relative_to(BENCHMARKS)) for p in PUBLISHED])
def test_a_published_file_names_no_machine_path(path: Path) -> None:
    found = [f'{n}: {line.strip()[:120]}' for n, line in enumerate(path.read_text().splitlines(), 1)
             if MACHINE_PATH.search(line)]  # fmt: skip
    assert not found, f'{path.relative_to(BENCHMARKS)} names a machine path:\n' + '\n'.join(found)
