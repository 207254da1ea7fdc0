"""`--cache-features`: a frozen backbone's maps computed once train the layers after it as the images would, where
the training transform draws nothing but the flip; the backbone runs once per cached view, not once per epoch; and
what cannot be cached is refused, naming the flag."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from fgvc_zoo.data import create_transforms, make_synthetic_fgvc
from fgvc_zoo.errors import UsageError
from fgvc_zoo.models import list_heads
from fgvc_zoo.models._backbone import Backbone
from fgvc_zoo.training import TrainConfig, train
from fgvc_zoo.training.feature_cache import CachedViews, MapStore, views_transform

# crop_pct 1 makes resize_crop's random crop the whole resized image: the train transform draws only the flip.
WHOLE_IMAGE = "pretrained_cfg_overlay={'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear'}"
FROZEN = {
    'probe': dict(model='test_resnet', freeze_backbone=True, model_args=WHOLE_IMAGE),
    'dpnet': dict(model='dpnet', backbone='test_resnet', model_args=WHOLE_IMAGE),
}
TRAIN_IMAGES, VAL_IMAGES = 3 * 6, 3 * 2


@pytest.fixture(scope='module')
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('cache_data')
    make_synthetic_fgvc(str(root), num_classes=3, train_per_class=6, val_per_class=2, image_size=48)
    return root


def _config(data: Path, output: Path, method: str, **options) -> TrainConfig:
    return TrainConfig(
        **FROZEN[method], data_dir=str(data), output=str(output), img_size=32, epochs=2, batch_size=4, lr=0.05,
        train_crop='resize_crop', workers=0, threads=1, seed=3, **options,
    )  # fmt: skip


@pytest.mark.parametrize('method', list(FROZEN))
@pytest.mark.parametrize(('views', 'hflip'), [('flip', 0.0), ('flip', 0.5), ('flip', 1.0), ('crops', 1.0)])
def test_cached_maps_train_to_the_weights_images_train_to(
    data: Path, tmp_path: Path, method: str, views: str, hflip: float
) -> None:
    """Where the transform draws only the flip, the cached run sees the same inputs in the same order with the same
    mirrors (hflip 0.5: drawn per image from torch's random state in both), so it ends on the same weights."""
    images = train(_config(data, tmp_path / 'images', method, hflip=hflip))
    cached = train(_config(data, tmp_path / 'cached', method, hflip=hflip, cache_features=views))
    for name, expected in images.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], expected, atol=1e-5, rtol=1e-4, msg=name)
    trained = images.history[-1]['train_loss']
    assert cached.history[-1]['train_loss'] == pytest.approx(trained, rel=1e-4)
    assert cached.metrics['top1'] == images.metrics['top1']
    assert cached.metrics['loss'] == pytest.approx(images.metrics['loss'], rel=1e-4)


def test_the_backbone_runs_once_per_cached_view_not_per_epoch(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    forward = Backbone.forward

    def counted(self, x):
        seen.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(Backbone, 'forward', counted)
    train(dataclasses.replace(_config(data, tmp_path, 'dpnet', cache_features='crops'), epochs=3))
    assert sum(seen) == 5 * 2 * TRAIN_IMAGES + VAL_IMAGES  # five crops, each mirrored (hflip 0.5), and val once


def test_views_are_the_eval_crop_the_five_crops_and_their_mirrors() -> None:
    image = Image.fromarray(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8).numpy())
    eval_transform = create_transforms({'crop_pct': 0.8, 'crop_mode': 'squash'}, False, img_size=32)
    resized = create_transforms({'crop_pct': 1.0, 'crop_mode': 'squash'}, False, img_size=40)(image)
    flip = views_transform(eval_transform, 'flip', 32, hflip=0.5)(image)
    crops = views_transform(eval_transform, 'crops', 32, hflip=0.5)(image)
    assert flip.shape == (1, 2, 3, 32, 32) and crops.shape == (5, 2, 3, 32, 32)
    torch.testing.assert_close(flip[0, 0], eval_transform(image))
    torch.testing.assert_close(flip[0, 1], eval_transform(image).flip(-1))
    torch.testing.assert_close(crops[4], flip[0])  # torchvision's five crops end with the centre
    torch.testing.assert_close(crops[0, 0], resized[:, :32, :32])  # top left of the 40 x 40 resize
    torch.testing.assert_close(crops[3, 0], resized[:, 8:, 8:])  # bottom right
    assert views_transform(eval_transform, 'flip', 32, hflip=0.0)(image).shape == (1, 1, 3, 32, 32)


def test_cached_views_draw_the_flip_as_random_horizontal_flip_does() -> None:
    maps = torch.arange(2 * 7, dtype=torch.float32).reshape(1, 2, 7, 1)
    torch.manual_seed(0)
    mirrored = [bool(torch.rand(1) < 0.3) for _ in range(7)]
    torch.manual_seed(0)
    drawn = [CachedViews(maps, list(range(7)), hflip=0.3)[i][0].item() for i in range(7)]
    assert drawn == [maps[0, int(m), i, 0].item() for i, m in enumerate(mirrored)]
    assert any(mirrored) and not all(mirrored)


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        (dict(model='test_resnet'), 'only a linear probe of it'),
        (dict(model='lfd', backbone='test_resnet'), 'trains on more than a frozen map'),
        (dict(model='dpnet', backbone='test_resnet', model_args='freeze_backbone=false'), 'more than a frozen map'),
        (dict(model='test_resnet', freeze_backbone=True, mixup=0.2), '--mixup/--cutmix/--color-jitter'),
        (dict(model='test_resnet', freeze_backbone=True, train_crop='rrc', cache='crops'), 'resize_crop'),
    ],
)
def test_what_cannot_be_cached_is_refused(data: Path, tmp_path: Path, options: dict, message: str) -> None:
    cache = options.pop('cache', 'flip')
    config = TrainConfig(data_dir=str(data), output=str(tmp_path / 'run'), img_size=32, epochs=1, batch_size=4,
                         workers=0, cache_features=cache, **{'train_crop': 'resize_crop', **options})  # fmt: skip
    with pytest.raises(UsageError, match=f'--cache-features {cache}.*{message}'):
        train(config)
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('head', list_heads())
def test_a_head_on_a_frozen_map_has_no_trainable_backbone_and_forward_map_is_forward(head: str) -> None:
    """The contract `--cache-features` relies on, for every registered head that declares it (DP-Net frozen)."""
    torch.manual_seed(0)
    model = timm.create_model(head, backbone='test_resnet', num_classes=3)
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    if not model.trains_on_frozen_map:  # LFD and IAGN zoom into the image: no map of it is all they read
        with pytest.raises(NotImplementedError):
            model.forward_map(model.frozen_map(x))
        return
    assert not any(p.requires_grad for p in model.backbone_parameters())
    torch.testing.assert_close(model.eval().forward_map(model.frozen_map(x)), model(x))
    model.train()
    from_map, from_image = model.forward_map(model.frozen_map(x), target), model(x, target=target)
    torch.testing.assert_close(from_map.loss, from_image.loss)
    assert from_map.losses.keys() == from_image.losses.keys()
    unfrozen = timm.create_model(head, backbone='test_resnet', num_classes=3, freeze_backbone=False)
    assert not unfrozen.trains_on_frozen_map


def test_a_resumed_cached_run_recomputes_its_maps_and_ends_on_the_unbroken_weights(data: Path, tmp_path: Path) -> None:
    """The checkpoint holds the random state the flips draw from; the maps are computed again (nothing of them is
    checkpointed), drawing nothing from it."""
    config = dataclasses.replace(_config(data, tmp_path, 'dpnet', cache_features='flip'), epochs=3, keep_checkpoints=3)
    unbroken = train(config).model.state_dict()
    shutil.rmtree(tmp_path / 'checkpoints' / 'epoch_003')
    (tmp_path / 'model.safetensors').unlink()
    resumed = train(dataclasses.replace(config, resume='auto'))
    assert [row['epoch'] for row in resumed.history] == [1, 2, 3]
    for name, expected in unbroken.items():
        assert torch.equal(resumed.model.state_dict()[name], expected), name


def test_runs_sharing_a_frozen_backbone_compute_its_maps_once_and_train_as_if_they_had(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `MapStore` (compare's, across the lrs and seeds of a method): the second run takes the first run's maps, and
    ends where computing its own would have; a change of what the maps depend on (here the views) computes anew."""
    seen = []
    forward = Backbone.forward
    monkeypatch.setattr(Backbone, 'forward', lambda self, x: seen.append(x.shape[0]) or forward(self, x))
    store = MapStore()
    weights = tmp_path / 'test_resnet.safetensors'  # the same frozen backbone for every seed, as compare gives it
    save_file(timm.create_model('test_resnet').state_dict(), str(weights))
    config = _config(data, tmp_path / 'first', 'dpnet', cache_features='flip', backbone_weights=str(weights))
    train(config, store)
    assert sum(seen) == 2 * TRAIN_IMAGES + VAL_IMAGES
    second = dataclasses.replace(config, output=str(tmp_path / 'second'), seed=4, lr=0.02)
    shared = train(second, store)
    assert sum(seen) == 2 * TRAIN_IMAGES + VAL_IMAGES, 'the second run computed the maps again'
    own = train(dataclasses.replace(second, output=str(tmp_path / 'own')))
    for name, expected in own.model.state_dict().items():
        assert torch.equal(shared.model.state_dict()[name], expected), name
    seen.clear()
    train(dataclasses.replace(config, output=str(tmp_path / 'crops'), cache_features='crops'), store)
    assert sum(seen) == 10 * TRAIN_IMAGES + VAL_IMAGES
