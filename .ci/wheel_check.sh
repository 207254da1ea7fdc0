#!/usr/bin/env bash
# Release check: the sdist and wheel build, and the wheel alone (no source checkout) trains, exports, evaluates,
# explains and reloads. Run by .ci/run inside the activated test venv, whose torch stack the fresh venv reuses.
#
# The fresh venv sees the test venv's site-packages through a .pth path line (site does not run the .pth files
# inside that folder, so the test venv's editable install does not put the checkout on sys.path), and the wheel is
# installed there with --no-index: the wheel's own dependency bounds must be met by the tested stack, and nothing
# is downloaded. Every step runs from a temporary folder with PYTHONPATH unset, and fails if fgvc_zoo resolves into
# the checkout or the checkout changes.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
if [ -n "${WHEEL_CHECK_KEEP:-}" ]; then  # keep the venv, the demo run and its PNGs to look at
    trap 'echo "wheel_check: kept $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
unset PYTHONPATH
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
before="$(git -C "$REPO" status --porcelain)"

echo "== build sdist + wheel (the wheel from the sdist)"
python -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
if grep -iE 'deprecat|SetuptoolsWarning' "$WORK/build.log"; then
    echo "wheel_check: the build warns (above); fix pyproject.toml" >&2
    exit 1
fi
wheel="$(ls "$WORK"/dist/fgvc_zoo-*.whl)"
ls "$WORK"/dist/fgvc_zoo-*.tar.gz >/dev/null

echo "== fresh venv with only the wheel of fgvc-zoo (plus the tested torch stack)"
stack="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python -m venv --without-pip "$WORK/venv"
fresh="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$stack" >"$fresh/_tested_torch_stack.pth"
"$WORK/venv/bin/python" -m pip --version >/dev/null  # pip comes from the stack's site-packages
"$WORK/venv/bin/python" -m pip install --quiet --no-index "$wheel"

mkdir "$WORK/run"
cd "$WORK/run"
PY="$WORK/venv/bin/python"
FGVC="$WORK/venv/bin/fgvc-zoo"

"$PY" - "$REPO" <<'EOF'
import sys
from importlib import metadata, resources
from pathlib import Path

import fgvc_zoo

repo = Path(sys.argv[1])
template = resources.files('fgvc_zoo') / 'templates' / 'model_card.md'
for what, path in (('fgvc_zoo', fgvc_zoo.__file__), ('its card template', str(template))):
    if Path(path).resolve().is_relative_to(repo) or not Path(path).resolve().is_relative_to(sys.prefix):
        sys.exit(f'wheel_check: {what} resolves to {path}, not into the fresh venv {sys.prefix}')
version = metadata.version('fgvc-zoo')
if version != fgvc_zoo.__version__:
    sys.exit(f'wheel_check: the wheel says version {version}, fgvc_zoo.__version__ {fgvc_zoo.__version__}')
print(f'fgvc_zoo {version} from {Path(fgvc_zoo.__file__).parent}')
EOF

echo "== demo train, export, eval, explain from $WORK/run"
"$FGVC" train --model lfd --backbone test_resnet --synthetic --img-size 64 --epochs 1 --batch-size 16 --workers 0 \
    --model-args 'zoom_size=32,num_regions=2,num_hybrid_regions=1' --output demo
"$FGVC" export demo --repo-id fgvc-zoo/wheel-check
"$FGVC" eval --checkpoint demo --data-dir demo/synthetic_data --workers 0 --out eval.json
images=(demo/synthetic_data/val/*/*.png)
"$FGVC" explain --checkpoint demo "${images[0]}" --out explained.png
test -s explained.png

"$PY" - "$REPO" <<'EOF'
import json
import os
import stat
import sys
from pathlib import Path

import torch

import fgvc_zoo.hub

repo = Path(sys.argv[1])
model = fgvc_zoo.hub.load_model('demo')
x = torch.randn(2, 3, 64, 64)
assert model(x).shape == (2, 4), model(x).shape
config = json.loads(Path('demo/config.json').read_text())
assert 'base_model' not in config and config['pretrained_weights'] is None, 'trained without --pretrained'
card = Path('demo/README.md').read_text()
assert 'base_model' not in card.split('---')[1] and 'hf-hub:fgvc-zoo/wheel-check' in card
umask = os.umask(0)
os.umask(umask)
mode = stat.S_IMODE(Path('demo/model.safetensors').stat().st_mode)
assert mode == 0o666 & ~umask, oct(mode)
loaded = [m.__file__ for name, m in sys.modules.items() if name.startswith('fgvc_zoo') and getattr(m, '__file__', None)]
inside = [f for f in loaded if Path(f).resolve().is_relative_to(repo)]
assert loaded and not inside, f'modules loaded from the checkout: {inside}'
print(f'reloaded {config["architecture"]} from demo/; {len(loaded)} fgvc_zoo modules, none from the checkout')
EOF

after="$(git -C "$REPO" status --porcelain)"
if [ "$before" != "$after" ]; then
    echo "wheel_check: the checkout changed during the wheel check:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
fi
echo "== wheel check passed"
