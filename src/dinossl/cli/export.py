"""``dino export``: write a checkpoint's backbone in the released layout."""

from __future__ import annotations

import argparse

FORMATS = ("pth", "safetensors")  # dinossl.weights.FORMATS, without importing torch to build the parser


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the teacher (or student) backbone of a checkpoint in the released DINO layout",
        description="Write the backbone of a training checkpoint (this project's or the reference's), a network "
        "state dict or a backbone file as a plain state dict with the released DINO keys, loadable by "
        "dinossl.hub, timm and the reference code. The architecture is read from the tensors and checked.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="weights file (.pth or .safetensors), URL or released-model name (dino_vits16 ...)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="output format (default: from --output's suffix, else pth)")
    parser.add_argument("--student", action="store_true", help="export the student backbone instead of the teacher")
    parser.add_argument("--output", metavar="PATH", default=None,
                        help="output file (default: <checkpoint stem>_<teacher|student>_backbone.<format> beside it)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinossl.weights import export_backbone_file, local_file

    which = "student" if args.student else "teacher"
    source = local_file(args.checkpoint)
    path, spec = export_backbone_file(source, args.output, args.format, which, overwrite=args.force)
    print(f"wrote the {which} backbone to {path}: {spec.describe()}")
    return 0
