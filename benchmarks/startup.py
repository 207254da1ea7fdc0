"""How long the CLI takes before it does anything, and how fast it gives up without the Hub: the timings the unit
tests used to assert, measured here instead (a shared machine makes a timed unit test flaky).

`python benchmarks/startup.py [--runs N]` prints, per case, the median wall and CPU seconds of N child processes:
`fgvc-zoo --help` (must not import torch), `import fgvc_zoo` then `import timm` (the heads registered), and an offline
`fgvc-zoo train --pretrained` with an empty Hub cache (one error line, no retries).
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    'fgvc-zoo --help': [sys.executable, '-m', 'fgvc_zoo.cli', '--help'],
    'import fgvc_zoo, timm (heads registered)': [
        sys.executable,
        '-c',
        'import fgvc_zoo, timm; assert timm.is_model("lfd_resnet50")',
    ],
    'offline train --pretrained, empty cache': [
        sys.executable,
        '-m',
        'fgvc_zoo.cli',
        'train',
        '--model',
        'lfd_resnet50',
        '--pretrained',
        '--synthetic',
        '--img-size',
        '64',
    ],
}


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the child, its exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, finished.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5, help='child processes per case (medians are printed)')
    args = parser.parse_args()
    print(f'# {sys.executable}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {args.runs} runs each')
    print('| case | wall s (median) | CPU s (median) | exit |\n|---|---|---|---|')
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=os.path.join(tmp, 'empty_cache'), OMP_NUM_THREADS='1')
        for name, command in CASES.items():
            if name.startswith('offline'):
                command = [*command, '--output', os.path.join(tmp, 'run')]
            runs = [timed(command, env) for _ in range(args.runs)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f'| {name} | {wall:.2f} | {cpu:.2f} | {sorted({r[2] for r in runs})} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
