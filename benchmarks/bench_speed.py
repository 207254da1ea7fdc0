"""`python benchmarks/bench_speed.py [options]` is `fgvc-zoo bench [options]`; see fgvc_zoo/bench.py."""

import argparse
import sys

from fgvc_zoo.bench import add_bench_arguments, bench_main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Time each head against the backbone passes it needs.')
    add_bench_arguments(parser)
    sys.exit(bench_main(parser.parse_args()))
