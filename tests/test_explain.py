"""`fgvc_zoo.inference.explain`: geometry back to the original image, what each head's PNG shows, `fgvc-zoo explain`
on a real photo; and the pointing benchmark's box choices and metric on hand-made cases."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T

from fgvc_zoo.cli import run
from fgvc_zoo.data import pointing_accuracy
from fgvc_zoo.errors import UsageError
from fgvc_zoo.hub import load_model, save_pretrained
from fgvc_zoo.inference.explain import explain_images, output_paths, view_geometry
from fgvc_zoo.models import DpNet, Explanation
from fgvc_zoo.runtime import load_for_inference

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark():
    spec = importlib.util.spec_from_file_location('pointing', ROOT / 'benchmarks' / 'pointing.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pointing = _load_benchmark()


def real_photo(tmp_path: Path) -> Path:
    """A 512 x 300 crop of one of the ImageNet photos shipped with foolbox (non-square: the centre crop cuts)."""
    # the package's location without importing it (importing foolbox loads its whole attack library)
    package = Path(importlib.util.find_spec('foolbox').submodule_search_locations[0])
    source = package / 'data' / 'imagenet_00_243.jpg'
    path = tmp_path / 'photo.jpg'
    Image.open(source).convert('RGB').crop((0, 100, 512, 400)).save(path)
    return path


def test_geometry_of_resize_and_centre_crop_is_hand_computed():
    # 512 x 300 -> Resize(109): short side 109, long int(109 * 512 / 300) = 186 -> 186 x 109;
    # CenterCrop(96) cuts round(90 / 2) = 45 px left and round(13 / 2) = 6 px top (Python rounds half to even).
    geometry = view_geometry(T.Compose([T.Resize(109), T.CenterCrop(96), T.ToTensor()]), (512, 300))
    assert geometry.input_size == (96, 96)
    assert geometry.scale == pytest.approx((186 / 512, 109 / 300))
    assert geometry.offset == (45, 6)
    assert geometry.extent == pytest.approx((45 * 512 / 186, 6 * 300 / 109, 141 * 512 / 186, 102 * 300 / 109))
    assert geometry.to_original([[0, 0, 48, 48]]) == pytest.approx(
        np.array([[45 * 512 / 186, 6 * 300 / 109, 93 * 512 / 186, 54 * 300 / 109]])
    )


def test_geometry_of_squash_resize_then_crop():
    # 200 x 100 squashed to 80 x 80 (scale 0.4, 0.8), centre 64 x 64 starts at (8, 8): input (0, 0) is original
    # (8 / 0.4, 8 / 0.8) = (20, 10) and input (64, 64) is (72 / 0.4, 72 / 0.8) = (180, 90).
    geometry = view_geometry(T.Compose([T.Resize((80, 80)), T.CenterCrop(64)]), (200, 100))
    assert geometry.extent == pytest.approx((20, 10, 180, 90))


def test_geometry_matches_where_torchvision_puts_a_pixel_when_the_crop_pads():
    # A crop larger than the image pads it: the marked pixel must be found where the geometry says.
    image = np.zeros((70, 50, 3), dtype=np.uint8)
    image[20, 10] = 255  # x = 10, y = 20
    transform = T.Compose([T.CenterCrop(64), T.PILToTensor()])
    cropped = transform(Image.fromarray(image))
    v, u = map(int, (cropped[0] == 255).nonzero()[0])
    geometry = view_geometry(transform, (50, 70))
    assert geometry.offset == (-7, 3)
    assert geometry.to_original([[u, v, u + 1, v + 1]]) == pytest.approx(np.array([[10, 20, 11, 21]]))


def test_geometry_refuses_transforms_it_cannot_invert():
    with pytest.raises(ValueError, match='RandomResizedCrop'):
        view_geometry(T.Compose([T.RandomResizedCrop(64), T.ToTensor()]), (100, 100))


def test_dpnet_draws_the_parts_that_weigh_most_in_the_predicted_class():
    # V[pred] = [0.5, -1, 2, 0.3], part scores [1, 3, 0.3, 4]: weights [0.5, -3, 0.6, 1.2] -> parts 3, 2, 0
    # (by score alone it would be 3, 1, 0; by V alone 2, 0, 3).
    participation = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -1.0, 2.0, 0.3]])
    part_boxes = torch.arange(16, dtype=torch.float32).view(1, 4, 4)  # part p's box: [4p, 4p + 1, 4p + 2, 4p + 3]
    exp = Explanation(
        heatmaps={},
        boxes=part_boxes,
        scores=torch.tensor([[1.0, 3.0, 0.3, 4.0]]),
        labels=torch.tensor([1]),
        logits=torch.zeros(1, 2),
        extras={'part_participation': participation},
    )
    values, weight, top = DpNet.top_parts(exp, 0, num_parts=3)
    assert top == [3, 2, 0]
    assert weight.tolist() == pytest.approx([0.5, -3.0, 0.6, 1.2])
    assert pointing.pointing_boxes('dpnet', exp).tolist() == [[12, 13, 14, 15]]  # the best box of part 3


def test_dpnet_draws_as_many_parts_as_its_explanation_parts():
    # The hand-made case above: weights [0.5, -3, 0.6, 1.2], so the two heaviest parts are 3 and 2.
    exp = Explanation(
        heatmaps={'parts': torch.rand(1, 4, 8, 8)},
        boxes=torch.arange(16, dtype=torch.float32).view(1, 4, 4),
        scores=torch.tensor([[1.0, 3.0, 0.3, 4.0]]),
        labels=torch.tensor([1]),
        logits=torch.zeros(1, 2),
        extras={'part_participation': torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -1.0, 2.0, 0.3]])},
    )
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=2)
    assert model.explanation_parts == 3
    model.explanation_parts = 2
    panels = model.explanation_panels(exp, 0, 'bee')
    assert panels[0].box_labels == ['part 3: 1.20', 'part 2: 0.60']
    assert [panel.title.split(' map')[0] for panel in panels[1:]] == ['part 3', 'part 2']
    assert model.explanation_chart(exp, 0, 'bee').highlight == [3, 2]


@pytest.mark.parametrize(
    'head, model_args, panels',
    [
        ('lfd', {}, 3),  # regions; attention map; predicted class map
        ('dpnet', {'part_box_cells': 1}, 1 + 3),  # top parts' boxes; 3 part maps (+ the participation chart)
        (
            'iagn',
            {'mid_channels': 16, 'feature_channels': 32, 'hidden_features': 16},
            1 + 3 + 1,
        ),  # box; 3 stages; fused
    ],
)
def test_explain_cli_on_a_real_photo_lines_up_with_the_original(tmp_path, head, model_args, panels):
    photo = real_photo(tmp_path)
    model = timm.create_model(head, backbone='test_resnet', num_classes=3, **model_args)
    folder = save_pretrained(model, tmp_path / 'model', label_names=['ant', 'bee', 'cat'])
    out = tmp_path / 'explained'
    common = [str(photo), '--checkpoint', str(folder), '--img-size', '96']
    assert run(['explain', *common, '--view', 'crop', '--out', str(out)]) == 0
    png = out / 'photo_explain.png'

    # The geometry the PNG was drawn from: the head's squash to floor(96 / crop_pct) square + CenterCrop(96) view of
    # the 512 x 300 original. LFD, DP-Net: crop_pct 448/600 -> 128 px, 16 px cut each side; IAGN: 448/550 -> 117 px,
    # round(10.5) = 10 px cut at the left/top (torchvision's rounding).
    loaded, transform, names, _ = load_for_inference(str(folder), img_size=96)
    (explained,) = explain_images(loaded, [Image.open(photo).convert('RGB')], transform, names, view='crop')
    x1, y1, x2, y2 = explained.map_extent
    side, cut = {'lfd': (128, 16), 'dpnet': (128, 16), 'iagn': (117, 10)}[head]
    expected = (cut * 512 / side, cut * 300 / side, (cut + 96) * 512 / side, (cut + 96) * 300 / side)
    assert (x1, y1, x2, y2) == pytest.approx(expected)
    assert len(explained.panels) == panels
    assert explained.label in names
    for panel in explained.panels:
        if panel.heatmap is not None:
            assert panel.heatmap.shape == (96, 96)  # drawn over exactly the extent above
        boxes = panel.boxes
        assert len(boxes) == len(panel.box_labels)
        assert (boxes[:, 0] >= x1 - 1e-6).all() and (boxes[:, 2] <= x2 + 1e-6).all()
        assert (boxes[:, 1] >= y1 - 1e-6).all() and (boxes[:, 3] <= y2 + 1e-6).all()
    assert any(len(panel.boxes) for panel in explained.panels)
    # every image panel is the whole 512 x 300 original at scale 1 (with a title strip above and a legend strip
    # below); DP-Net adds its participation chart
    assert explained.panel_scale == 1 and explained.layout['image'] == 300
    assert Image.open(png).size == explained.png_size
    assert explained.png_size[0] == 512 * (panels + (head == 'dpnet'))

    # The default view explains the whole original: the heads squash, so the model's input is all of it squashed to
    # 96 x 96 (as the heads train), and every map covers all 512 x 300 pixels.
    assert run(['explain', *common, '--out', str(out)]) == 0
    (whole,) = explain_images(loaded, [Image.open(photo).convert('RGB')], transform, names)
    assert whole.geometry.input_size == (96, 96)
    assert whole.map_extent == pytest.approx((0, 0, 512, 300), abs=1.5)  # int() truncation of the long side
    assert Image.open(png).size == whole.png_size


def test_explain_single_png_output_and_small_images_are_upscaled(tmp_path):
    image = tmp_path / 'tiny.png'
    Image.new('RGB', (64, 32), (120, 30, 200)).save(image)
    folder = save_pretrained(timm.create_model('lfd', backbone='test_resnet', num_classes=2), tmp_path / 'model')
    out = tmp_path / 'one.png'
    assert run(['explain', str(image), '--checkpoint', str(folder), '--img-size', '96', '--out', str(out)]) == 0
    # longest side 64 is drawn with 256 px: scale 4, three LFD panels of 256 x 128 (plus title and legend strips)
    (explained,) = explain_images(
        load_model(str(folder)), [Image.open(image).convert('RGB')], _transform(folder, 96), None
    )
    assert explained.panel_size == (256, 128)
    assert Image.open(out).size == explained.png_size and explained.png_size[0] == 3 * 256


def _transform(folder: Path, img_size: int):
    return load_for_inference(str(folder), img_size=img_size)[1]


def test_cam_boxes_bound_the_pixels_at_half_the_max_after_min_max_scaling():
    cams = torch.zeros(2, 4, 6)
    cams[0, 1, 2], cams[0, 2, 4], cams[0, 3, 0] = 10.0, 6.0, 4.0  # min-max: 1.0, 0.6, 0.4 -> keep (2,1), (4,2)
    cams[1] = 3.0  # constant: the whole map
    assert pointing.cam_boxes(cams).tolist() == [[2, 1, 5, 3], [0, 0, 6, 4]]


def test_pointing_boxes_of_each_head_and_the_centre_baseline():
    exp = Explanation(
        heatmaps={'predicted_class': torch.zeros(1, 1, 8, 8)},
        boxes=torch.tensor([[[1.0, 2, 3, 4], [0, 0, 8, 8]]]),
        scores=torch.ones(1, 2),
        labels=torch.tensor([0]),
        logits=torch.zeros(1, 2),
    )
    exp.heatmaps['predicted_class'][0, 0, 6, 5] = 1
    assert pointing.pointing_boxes('lfd', exp).tolist() == [[1, 2, 3, 4]]
    assert pointing.pointing_boxes('iagn', exp).tolist() == [[1, 2, 3, 4]]
    assert pointing.pointing_boxes('plain_cam', exp).tolist() == [[5, 6, 6, 7]]
    assert pointing.centred(torch.tensor([[1.0, 2, 3, 4]]), 10, 20).tolist() == [[4, 9, 6, 11]]


def test_pointing_counts_part_centres_inside_boxes_mapped_to_the_original():
    # A 2x downscale (Resize(50) of 100 x 100, no crop): input box (10, 10, 20, 20) is original (20, 20, 40, 40).
    geometry = view_geometry(T.Compose([T.Resize(50), T.CenterCrop(50)]), (100, 100))
    boxes = geometry.to_original([[10, 10, 20, 20], [10, 10, 20, 20], [0, 0, 5, 5]])
    parts = [
        [25, 25, 35, 35],  # centre (30, 30): inside
        [36, 36, 44, 44],  # centre (40, 40): on the border, counts
        [20, 20, 30, 30],
    ]  # centre (25, 25): outside (0, 0, 10, 10)
    assert pointing_accuracy(boxes, parts) == pytest.approx(2 / 3)


def test_explain_refuses_a_model_that_is_not_a_head():
    with pytest.raises(TypeError, match='not an fgvc_zoo head'):
        explain_images(
            timm.create_model('test_resnet', num_classes=2),
            [Image.new('RGB', (64, 64))],
            T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()]),
        )


def test_output_names_take_the_folder_when_file_names_repeat(tmp_path):
    out = str(tmp_path / 'out')
    assert output_paths(['a/x.jpg', 'b/y.jpg'], out) == [
        tmp_path / 'out' / 'x_explain.png',
        tmp_path / 'out' / 'y_explain.png',
    ]
    assert output_paths(['cub/bird/0001.jpg', 'cub/cat/0001.jpg'], out) == [
        tmp_path / 'out' / 'bird_0001_explain.png',
        tmp_path / 'out' / 'cat_0001_explain.png',
    ]
    with pytest.raises(UsageError, match='single file but 2 images'):
        output_paths(['a.jpg', 'b.jpg'], str(tmp_path / 'one.png'))


def _embedded_svg_images(svg: str) -> list[tuple[int, int]]:
    import base64
    import io
    import re

    payloads = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=\s]+)', svg)
    return [Image.open(io.BytesIO(base64.b64decode(p))).size for p in payloads]


def test_explain_writes_png_at_a_dpi_and_vector_figures_holding_the_original_at_its_resolution(tmp_path):
    photo = tmp_path / 'big.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(photo)  # larger than a panel
    folder = save_pretrained(timm.create_model('lfd', backbone='test_resnet', num_classes=2), tmp_path / 'model')
    common = [str(photo), '--checkpoint', str(folder), '--img-size', '96']
    assert run(['explain', *common, '--out', str(tmp_path / 'at100.png')]) == 0
    assert run(['explain', *common, '--dpi', '200', '--out', str(tmp_path / 'at200.png')]) == 0
    width, height = Image.open(tmp_path / 'at100.png').size
    assert Image.open(tmp_path / 'at200.png').size == (2 * width, 2 * height)
    assert run(['explain', *common, '--format', 'pdf', '--out', str(tmp_path / 'fig.pdf')]) == 0
    assert (tmp_path / 'fig.pdf').read_bytes().startswith(b'%PDF')
    assert run(['explain', *common, '--out', str(tmp_path / 'fig.svg')]) == 0  # the format from the suffix
    sizes = _embedded_svg_images((tmp_path / 'fig.svg').read_text())
    # each of LFD's three panels embeds the 1600 x 1200 original itself, not the 1024 px panel's resampling
    assert sizes.count((1600, 1200)) == 3, sizes
    with pytest.raises(UsageError, match=r'is not a \.pdf file'):
        run(['explain', *common, '--format', 'pdf', '--out', str(tmp_path / 'fig.png')])
