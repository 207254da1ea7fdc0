"""The trainer as a library: the README's Python example runs as written, and a notebook gets back the metrics, the
history and the trained model, the same as the exported folder holds."""

import re
from pathlib import Path

import pytest
import torch

from fgvc_zoo.errors import UsageError
from fgvc_zoo.hub import load_model
from fgvc_zoo.training import TrainConfig

README = Path(__file__).resolve().parents[1] / 'README.md'


def readme_example() -> str:
    text = README.read_text()
    return re.search(r'<!-- python-api[^>]*-->\n```python\n(.*?)```', text, re.S).group(1)


@pytest.mark.timeout(600)
def test_the_readme_python_example_trains_and_gives_back_metrics_history_and_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), 'README.md', 'exec'), scope)
    result = scope['result']
    assert len(result.history) == 3 and result.metrics['top1'] == result.history[-1]['val_top1']
    assert result.output == Path('out/nb') and (tmp_path / 'out/nb/model.safetensors').is_file()
    assert not result.model.training
    exported = load_model(str(tmp_path / 'out/nb')).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), exported(x))


def test_a_config_needs_no_torch_and_a_bad_option_is_one_line_before_training(tmp_path) -> None:
    import subprocess
    import sys

    code = 'import sys; from fgvc_zoo.training import TrainConfig; print("torch" in sys.modules, "timm" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.split() == ['False'] * 2
    with pytest.raises(UsageError, match='--img-size must be >= 1'):
        TrainConfig(model='dpnet', backbone='test_resnet', synthetic=True, img_size=0).resolve()


def test_a_recipe_loads_into_the_config_and_options_given_win(tmp_path) -> None:
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('model: lfd_resnet50\nlr: 1e-2\nbatch-size: 8\nepochs: 7\n')
    config = TrainConfig.from_recipe(recipe, synthetic=True, epochs=3)
    assert (config.model, config.lr, config.batch_size, config.epochs) == ('lfd_resnet50', 0.01, 8, 3)
    recipe.write_text('model: lfd_resnet50\nbatch_szie: 8\n')
    with pytest.raises(UsageError, match="unknown option 'batch_szie'. Did you mean batch-size"):
        TrainConfig.from_recipe(recipe, synthetic=True)


def test_the_flags_are_the_fields() -> None:
    import argparse
    from dataclasses import fields

    from fgvc_zoo.training.config import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    dests = {a.dest for a in parser._actions if a.dest != 'help'}
    assert dests == {f.name for f in fields(TrainConfig)}
    config = TrainConfig(model='lfd', backbone='test_resnet', synthetic=True, scale=(0.2, 1.0), pretrained=True)
    from fgvc_zoo.training.config import resolve_config

    assert resolve_config(parser.parse_args(config.to_flags())) == config.resolve()
