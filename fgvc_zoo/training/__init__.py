"""The trainer's parts: `config` (flags, recipes, the resolved config) and `checkpoints` (atomic checkpoints,
`--resume`, the output lock); the loop is `fgvc_zoo.train`, which `python -m fgvc_zoo.train` runs."""
