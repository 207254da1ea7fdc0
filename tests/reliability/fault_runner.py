"""`python fault_runner.py ARGS...` is `fgvc-zoo ARGS...` with one fault armed by environment variables.

FGVC_FAULT_SIGNAL: KILL or TERM, sent by the process to itself at the point FGVC_FAULT_AT names:
  forward:N          the N-th training forward pass (`model(x, target=y)`), i.e. in the middle of a step;
  checkpoint-write:E while accelerate writes the first file of epoch E's checkpoint (the file is cut to half its
                     bytes first, as a write interrupted by the kill would leave it);
  after-save-state:E after accelerate wrote every file of epoch E's checkpoint, before the trainer records it.
The hooks wrap library functions the trainer calls; the trainer's own code runs unchanged.
"""

import os
import signal
import sys

import accelerate
import accelerate.checkpointing

from fgvc_zoo import cli
from fgvc_zoo.models import FgvcModel


def _die() -> None:
    os.kill(os.getpid(), getattr(signal, f'SIG{os.environ["FGVC_FAULT_SIGNAL"]}'))
    signal.pause()  # SIGTERM is delivered asynchronously: never return into the trainer


def _arm(point: str, value: int) -> None:
    if point == 'forward':
        original_forward = FgvcModel.forward
        calls = [0]

        def forward(self, x, target=None, step=0):
            if target is not None and self.training:
                calls[0] += 1
                if calls[0] == value:
                    _die()
            return original_forward(self, x, target=target, step=step)

        FgvcModel.forward = forward
    elif point == 'checkpoint-write':
        original_save = accelerate.checkpointing.save

        def save(obj, f, *args, **kwargs):
            result = original_save(obj, f, *args, **kwargs)
            if f'.epoch_{value:03d}.tmp' in str(f):
                os.truncate(f, os.path.getsize(f) // 2)
                _die()
            return result

        accelerate.checkpointing.save = save
    elif point == 'after-save-state':
        original_save_state = accelerate.Accelerator.save_state

        def save_state(self, output_dir=None, *args, **kwargs):
            result = original_save_state(self, output_dir, *args, **kwargs)
            if f'.epoch_{value:03d}.tmp' in str(output_dir):
                _die()
            return result

        accelerate.Accelerator.save_state = save_state
    else:
        raise ValueError(f'FGVC_FAULT_AT={point}:{value}: unknown point')


if __name__ == '__main__':
    point, _, value = os.environ['FGVC_FAULT_AT'].partition(':')
    _arm(point, int(value))
    sys.exit(cli.run(sys.argv[1:]))
