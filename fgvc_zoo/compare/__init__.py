"""Does a head help on my data? Each head against the baseline its paper claims to beat (a plain fine-tune of the
same backbone, or a linear probe of it frozen), and against both, through the trainer.

The protocol (first run as `benchmarks/compare.py`), fixed before any result is read:

- Splits: a val split carved from the training images (stratified per class, `val_fraction`, fixed `split_seed`),
  materialised as a folder layout of symlinks, OUTPUT/data/{train,val}, which the trainer reads with its folder
  layout; so any layout `create_dataset` reads works, and what a split means never depends on the trainer's names.
  The test split is listed and linked (OUTPUT/test_data) only after every run has trained and every lr is chosen.
- Budget: the same backbone, backbone weights, maximum epochs, patience, batch size, input size, preprocessing
  (`REFERENCE_PREPROCESSING`) and trainer flags for every method. A run stops when its val top-1 has not improved for
  `patience` epochs and keeps its best-val weights (the trainer's `--patience`, `--keep-best`). With `cache_frozen`
  the frozen methods (probe, DP-Net frozen) train on their backbone's maps computed once per image (the trainer's
  `--cache-features`): faster by about the epochs, but with fixed views instead of fresh random crops, which
  REPORT.md states.
- Per method an lr sweep at seed 0 scored on best val top-1 (ties: the smaller lr); seeds 1..n-1 train at the chosen
  lr. Test top-1 and mean per-class accuracy of every seed's best-val weights, reported as mean +- std, and as paired
  differences to each baseline (`plain`: timm's own classifier fine-tuned; `probe`: its classifier alone trained on
  the frozen backbone); each head's paper names the one it claims to beat (`PaperInfo.baseline`).

Every run writes OUTPUT/runs/NAME.json when it ends (its test scores are added to it at the end); a rerun skips the
recorded runs and continues an unfinished one from its last epoch checkpoint (the trainer's `--resume`).

Devices: `cpu` trains in this process, one run at a time (the cores are shared anyway). CUDA devices each get one
worker process pinned to its device (`CUDA_VISIBLE_DEVICES`), which trains one whole run at a time: runs are
independent, so spreading them over the devices keeps each run's batch, BatchNorm statistics and numbers those of
a one-device run (DDP inside a run would change them), and a sweep of L lrs x M methods finishes in about
L x M / D run times. Each run's speed and peak memory are measured in the process that runs it.
"""

from .jobs import estimate_seconds
from .protocol import (
    BASELINES,
    CACHE_FROZEN,
    DATA,
    DEFAULT_TRAIN_ARGS,
    HARD_SYNTHETIC,
    IMAGES,
    PLAIN,
    PROBE,
    REFERENCE_PREPROCESSING,
    RUNS,
    TEST_DATA,
    CompareConfig,
    cached_methods,
    claimed_baseline,
    portable_command,
    run_config,
    run_name,
)
from .report import report_markdown
from .runner import load_records, run_compare
from .splits import prepare_splits, prepare_test
from .stats import choose_lr, paired_interval, reading, summarise

__all__ = [
    'HARD_SYNTHETIC',
    'DEFAULT_TRAIN_ARGS',
    'REFERENCE_PREPROCESSING',
    'BASELINES',
    'CACHE_FROZEN',
    'PLAIN',
    'PROBE',
    'DATA',
    'TEST_DATA',
    'RUNS',
    'IMAGES',
    'CompareConfig',
    'claimed_baseline',
    'cached_methods',
    'run_name',
    'run_config',
    'portable_command',
    'prepare_splits',
    'prepare_test',
    'estimate_seconds',
    'load_records',
    'run_compare',
    'choose_lr',
    'summarise',
    'paired_interval',
    'reading',
    'report_markdown',
]
