"""Scheduling jobs over devices: in this process on CPU, else one worker process per CUDA device, each
training one whole run at a time (no DDP inside a run, so its numbers are those of a one-device run).
"""

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def _pin(index: str) -> None:
    """A worker's initialiser: see only its own CUDA device."""
    os.environ['CUDA_VISIBLE_DEVICES'] = index


class Devices:
    """Runs jobs on the devices: in this process on CPU, else one worker process per CUDA device."""

    def __init__(self, devices: list[str]):
        self.cuda = devices != ['cpu']
        context = multiprocessing.get_context('spawn')
        self.pools = [
            ProcessPoolExecutor(1, mp_context=context, initializer=_pin, initargs=(d.partition(':')[2] or '0',))
            for d in (devices if self.cuda else [])
        ]

    def run(self, jobs: list[tuple[Callable, tuple, Callable[[dict], None]]]) -> None:
        """Each job is (function, args, done): `done(function(*args, cuda=...))` as each ends."""
        if not self.cuda:
            for function, args, done in jobs:
                done(function(*args, cuda=False))
            return
        pending, lock, errors = list(jobs), threading.Lock(), []

        def serve(pool: ProcessPoolExecutor) -> None:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    function, args, done = pending.pop(0)
                try:
                    result = pool.submit(function, *args, cuda=True).result()
                    with lock:
                        done(result)
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the other devices stop
                    with lock:
                        errors.append(e)

        threads = [threading.Thread(target=serve, args=(pool,)) for pool in self.pools]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown()
