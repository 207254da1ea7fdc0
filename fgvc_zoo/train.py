"""`python -m fgvc_zoo.train`, `accelerate launch -m fgvc_zoo.train`, `torchrun ... -m fgvc_zoo.train`: the command
`fgvc-zoo train` under a module name, which is what those launchers run in each process."""

import sys

from .commands.train import launch as main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
