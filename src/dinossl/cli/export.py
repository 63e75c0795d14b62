"""``dino export``: write a checkpoint's backbone in the released layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import HelpFormatter, add_weights
from dinossl.outputs import default_output_folder, usable_output_file
from dinossl.weights import FORMATS, export_backbone_file, export_file_name, local_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", formatter_class=HelpFormatter,
        help="write the teacher (or student) backbone of a checkpoint in the released DINO layout",
        description="Write the backbone of a training checkpoint (dinossl's or the reference's), a network "
        "state dict or a backbone file as a plain state dict with the released DINO keys, loadable by "
        "dinossl.hub, timm and the reference code, as <output>/<stem>_<which>_backbone.<format>. The "
        "architecture is read from the tensors and checked.",
    )
    add_weights(parser)
    parser.add_argument("--student", dest="which", action="store_const", const="student", help=argparse.SUPPRESS)
    parser.add_argument("--format", choices=FORMATS, default="pth", help="output format")
    parser.add_argument("--output", metavar="FOLDER", default=None,
                        help="folder to write into (default: the checkpoint's folder; export-<name> for a "
                        "released name or URL)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file of the same name")
    parser.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    local = Path(args.weights)
    if args.output is not None:
        folder = Path(args.output)
    elif local.is_file():
        folder = local.parent
    else:
        folder = default_output_folder("export", args.weights)
    target = usable_output_file(folder / export_file_name(args.weights, args.format, args.which), args.overwrite)
    source = local_file(args.weights)  # may download: after the output is known to be writable
    path, spec = export_backbone_file(source, target, args.format, args.which, overwrite=args.overwrite)
    print(f"wrote the {args.which} backbone to {path}: {spec.describe()}")
    return 0
