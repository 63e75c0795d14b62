"""``dino export``: write a checkpoint's backbone in the released layout, or as an ONNX graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import HelpFormatter, add_weights
from dinossl.errors import DinoError
from dinossl.inference import BackboneHarness
from dinossl.inference.onnx_export import export_onnx
from dinossl.outputs import default_output_folder, usable_output_file
from dinossl.weights import FORMATS, export_backbone_file, export_file_name, local_file

ALL_FORMATS = (*FORMATS, "onnx")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", formatter_class=HelpFormatter,
        help="write the teacher (or student) backbone of a checkpoint in the released DINO layout or as ONNX",
        description="Write the backbone of a training checkpoint (dinossl's or the reference's), a network "
        "state dict or a backbone file as a plain state dict with the released DINO keys, loadable by "
        "dinossl.hub, timm and the reference code, or (--format onnx) as an ONNX graph for onnxruntime "
        "with a dynamic batch and, for a ViT, a dynamic image size. The architecture is read from the "
        "tensors and checked. The file is <output>/<stem>_<which>_backbone.<format>, or --output itself "
        "when it ends in .<format>.",
    )
    add_weights(parser)
    parser.add_argument("--student", dest="which", action="store_const", const="student", help=argparse.SUPPRESS)
    parser.add_argument("--format", choices=ALL_FORMATS, default=None,
                        help="output format (default: --output's extension when it is one of these, else pth)")
    parser.add_argument("--patch-tokens", action="store_true",
                        help="onnx: a second output, the last block's patch tokens (B, N, D) (ViT only)")
    parser.add_argument("--output", metavar="FOLDER_OR_FILE", default=None,
                        help="folder to write into, or the file itself when it ends in .<format> (default: the "
                        "checkpoint's folder; export-<name> for a released name or URL)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file of the same name")
    parser.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def output_format(output: str | None, fmt: str | None) -> str:
    """The format: ``--format``, else ``--output``'s extension when it names one, else pth. An
    output ending in another format's extension is an error."""
    suffix = Path(output).suffix.lstrip(".") if output is not None else ""
    if fmt is None:
        return suffix if suffix in ALL_FORMATS else "pth"
    if suffix in ALL_FORMATS and suffix != fmt:
        raise DinoError(f"--output {output} ends in .{suffix} but --format is {fmt}")
    return fmt


def export_target(weights: str, output: str | None, fmt: str, which: str) -> Path:
    """The file to write: ``output`` when it ends in ``.<fmt>``, else a file named after the
    weights in ``output`` (default: the checkpoint's folder, or ``export-<name>``)."""
    if output is not None and Path(output).suffix == f".{fmt}":
        return Path(output)
    local = Path(weights)
    if output is not None:
        folder = Path(output)
    elif local.is_file():
        folder = local.parent
    else:
        folder = default_output_folder("export", weights)
    return folder / export_file_name(weights, fmt, which)


def run(args: argparse.Namespace) -> int:
    fmt = output_format(args.output, args.format)
    if args.patch_tokens and fmt != "onnx":
        raise DinoError("--patch-tokens applies to --format onnx only")
    target = usable_output_file(export_target(args.weights, args.output, fmt, args.which), args.overwrite)
    source = local_file(args.weights)  # may download: after the output is known to be writable
    if fmt == "onnx":
        loaded = BackboneHarness(source, which=args.which, device="cpu").load()
        path = export_onnx(loaded.module, target, patch_tokens=args.patch_tokens, overwrite=args.overwrite)
        outputs = "descriptor and patch tokens" if args.patch_tokens else "descriptor"
        print(f"wrote the {args.which} backbone ({type(loaded.module).__name__}, {outputs}) as ONNX to {path}")
        return 0
    path, spec = export_backbone_file(source, target, fmt, args.which, overwrite=args.overwrite)
    print(f"wrote the {args.which} backbone to {path}: {spec.describe()}")
    return 0
