"""`fgvc-zoo convert-weights SOURCE OUT --arch NAME`: a state dict whose keys follow another naming, as a timm model's
safetensors weights (a `--backbone-weights` file), every tensor checked and the result judged on ImageNet photos
(the library: `fgvc_zoo.convert.convert_state_dict`)."""

import argparse

from ..errors import UsageError

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        'source',
        help='the weights: a trusted torch .pth/.pt (paired in order), or a .safetensors file with --name-map',
    )
    parser.add_argument('out', help='the .safetensors file to write (give it to train as --backbone-weights)')
    parser.add_argument(
        '--arch', required=True, help='timm architecture the weights are for, e.g. tf_efficientnet_lite0'
    )
    parser.add_argument(
        '--name-map', help='JSON object source key -> timm key; without it the tensors are paired in order'
    )
    parser.add_argument(
        '--min-top1',
        type=float,
        default=50.0,
        help="refuse the result unless its top-1 on foolbox's 20 ImageNet photos reaches this percentage (default "
        '50; random weights score about 0.1); 0 skips the check',
    )


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..convert import convert_state_dict, imagenet_top1, read_name_map, read_state_dict, save_converted
    from ..hub import share_file

    if not args.out.endswith('.safetensors'):
        raise UsageError(f'{args.out}: the converted weights are safetensors: name the file .safetensors.')
    if args.source.endswith('.safetensors') and not args.name_map:
        raise UsageError(
            f'{args.source}: a safetensors file keeps no order: pass --name-map FILE.json (source key -> timm key).'
        )
    name_map = read_name_map(args.name_map) if args.name_map else None
    converted = convert_state_dict(read_state_dict(args.source), args.arch, name_map)
    out = Path(args.out)
    written = save_converted(converted, out.with_name(out.name + '.partial.safetensors'))
    if args.min_top1 > 0:
        top1 = imagenet_top1(args.arch, written)
        if top1 < args.min_top1:
            written.unlink()
            raise ValueError(
                f"The converted {args.arch} reaches {top1:.0f} % top-1 on foolbox's ImageNet photos, below "
                f'--min-top1 {args.min_top1:g}: same-shape tensors were paired wrongly. Pass a --name-map.'
            )
        print(f"{args.arch}: {top1:.0f} % top-1 on foolbox's 20 ImageNet photos.")
    share_file(written)  # safetensors writes 0600; a --backbone-weights file is shared as export's weights are
    written.replace(out)
    print(f'Wrote {out} ({len(converted)} tensors): train with --backbone {args.arch} --backbone-weights {out}')
    return 0
