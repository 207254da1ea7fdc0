"""`python benchmarks/bench_speed.py [options]` is `fgvc-zoo bench [options]`; see fgvc_zoo/commands/bench.py."""

import argparse
import sys

from fgvc_zoo.commands.bench import add_arguments, main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Time each head against the backbone passes it needs.')
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
