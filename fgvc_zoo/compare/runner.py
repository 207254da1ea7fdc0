"""`run_compare`: every run not yet recorded trained (sweep at seed 0, then seeds at the chosen lr), each
recorded as it ends, the chosen runs tested, the report written; a rerun continues.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import jobs
from .devices import Devices
from .protocol import RUNS, CompareConfig, cached_methods, check, portable_command, run_config, run_name
from .report import disagreements, figures, report_markdown
from .splits import prepare_splits, prepare_test
from .stats import choose_lr, summarise


def write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix('.json.partial')
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def run_budget(budget: dict[str, Any], method: str) -> dict[str, Any]:
    """What one run of `method` shares with the others: the comparison's budget with the model args of its own
    method only, so that a method added to a comparison keeps the records of the others."""
    return budget | {'method_args': {k: v for k, v in budget['method_args'].items() if k == method}}


def load_records(config: CompareConfig, budget: dict[str, Any]) -> dict[tuple[str, float, int], dict[str, Any]]:
    """The runs recorded under OUTPUT/runs; a record of another budget (`config.budget()`, as JSON reads it back,
    `run_budget` of the record's method) stops the comparison."""
    records = {}
    for path in sorted((Path(config.output) / RUNS).glob('*.json')):
        record = json.loads(path.read_text())
        recorded, expected = run_budget(record['budget'], record['method']), run_budget(budget, record['method'])
        if recorded != expected:
            changed = sorted(k for k in expected if recorded.get(k) != expected[k])
            raise UsageError(
                f'{path} was trained with another budget (differs in {changed}): pass a new --output, or the same '
                f'options as that comparison to continue it.'
            )
        records[record['method'], record['lr'], record['seed']] = record
    return records


def _seeds_done(records: dict, key: tuple[str, float | None, int]) -> bool:
    """Whether seed `key[2]` of method `key[0]` is recorded at some lr (its chosen one, once seed 0 is swept)."""
    return any(m == key[0] and s == key[2] for m, _, s in records)


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> Path:
    """Train every run not yet recorded, test the chosen ones, write OUTPUT/REPORT.md; returns its path."""
    check(config)
    out = Path(config.output)
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config)
    budget = json.loads(json.dumps(config.budget()))  # hashes the weights file once
    records = load_records(config, budget)
    devices = Devices(config.devices)

    def train_jobs(keys: list[tuple[str, float, int]]) -> list:
        def done_for(method: str, lr: float, seed: int):
            def done(result: dict[str, Any]) -> None:
                record = dict(method=method, lr=lr, seed=seed, budget=budget, **result)
                record['command'] = portable_command(config, run_config(config, method, lr, seed))
                write_json(out / RUNS / f'{run_name(method, lr, seed)}.json', record)
                records[method, lr, seed] = record
                log(
                    f'{run_name(method, lr, seed)}: val top-1 {record["val_top1"]:.2f} ({record["train_wall_s"]:.0f} s)'
                )

            return done

        return [(jobs.train_job, (run_config(config, *key),), done_for(*key)) for key in keys if key not in records]

    pending = [(m, lr, 0) for m in config.methods for lr in config.lrs]
    pending += [(m, None, s) for m in config.methods for s in range(1, config.seeds)]
    pending = [key for key in pending if key not in records and (key[1] is not None or not _seeds_done(records, key))]
    if pending:
        seconds, per_batch = jobs.estimate_seconds(config, splits, [key[0] for key in pending])
        cached = set(cached_methods(config))
        timed = ', '.join(f'{m} {t:.3f} s{" (on cached maps)" * (m in cached)}' for m, t in per_batch.items())
        log(
            f'About {math.ceil(seconds / 60)} minutes for {len(pending)} runs (at most {config.epochs} epochs each; '
            f'patience may stop them sooner; {len(config.devices)} device(s)), from a timed training batch of '
            f'{config.batch_size} images per method: {timed}.'
        )
    try:
        devices.run(train_jobs([(m, lr, 0) for m in config.methods for lr in config.lrs]))
        chosen = {m: choose_lr(list(records.values()), m, config.lrs) for m in config.methods}
        devices.run(train_jobs([(m, chosen[m], s) for m in config.methods for s in range(1, config.seeds)]))
        test_root = prepare_test(config, splits)
        tests = []
        for method in config.methods:
            for seed in range(config.seeds):
                key = (method, chosen[method], seed)
                if 'test_top1' in records[key]:
                    continue

                def done(result: dict[str, Any], key=key) -> None:
                    records[key] |= result
                    write_json(out / RUNS / f'{run_name(*key)}.json', records[key])
                    log(f'{run_name(*key)}: test top-1 {result["test_top1"]:.2f}')

                run_dir = str(out / RUNS / run_name(*key))
                args = (run_dir, str(test_root), config.img_size, config.batch_size, seed == 0)
                tests.append((jobs.test_job, args, done))
        devices.run(tests)
    finally:
        devices.close()
    chosen_runs = [records[m, chosen[m], s] for m in config.methods for s in range(config.seeds)]
    sweep_runs = [records[m, lr, 0] for m in config.methods for lr in config.lrs]
    all_runs = list({run_name(r['method'], r['lr'], r['seed']): r for r in sweep_runs + chosen_runs}.values())
    summary = summarise(all_runs, config.methods, config.lrs, config.seeds)
    images = disagreements(config, summary, chosen_runs, test_root, splits) if config.explain else []
    figures(summary, splits['classes'], out)
    report = out / 'REPORT.md'
    report.write_text(report_markdown(config, summary, splits, all_runs, images))
    write_json(out / 'summary.json', summary)
    log(f'Wrote {report}')
    return report
