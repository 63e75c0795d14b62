"""The one grammar every ``dino`` command speaks: ``WEIGHTS`` first where there are weights,
``--which``, ``--device``, ``--output FOLDER``, ``--overwrite``, ``--no-progress``, ``--seed``,
and for the settings of a command ``--config FILE`` plus ``KEY=VALUE`` overrides.

A command's settings are sections of dataclasses (e.g. ``images`` and ``knn``). Each section
can be given in a YAML file (``--config``), as ``section.field=value`` overrides, or through
the command's own options, which name one field each; later sources win in that order. Every
option's default comes from its dataclass and is shown in ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dinossl.config.merge import apply_overrides, build_dataclass, read_yaml_mapping
from dinossl.errors import ConfigError
from dinossl.inference import BackboneHarness
from dinossl.outputs import default_output_folder, usable_output_folder
from dinossl.runtime.device import DEVICE_HELP

WEIGHTS_HELP = ("training checkpoint (checkpoint.pth), backbone file (.pth or .safetensors in the released layout), "
                "released-model name (dino_vits16, dino_vits8, dino_vitb16, dino_vitb8, dino_resnet50), URL, or "
                "hf-hub:ORG/NAME (a timm or transformers repository on the Hugging Face Hub)")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a value default and the help does
    not already say its default; flags (off by default) and options without a default are left alone."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default in (None, False, argparse.SUPPRESS) or isinstance(default, list):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


def add_weights(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """WEIGHTS (positional, first) and ``--which``."""
    parser.add_argument("weights", metavar="WEIGHTS", help=WEIGHTS_HELP + extra)
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher",
                        help="network of a training checkpoint")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--tf32/--no-tf32`` (how a GPU computes float32 matmuls and convolutions)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="on a GPU, compute float32 matmuls and convolutions with TF32 tensor cores; "
                             "--no-tf32: IEEE float32 (default: TF32)")


def add_output(parser: argparse.ArgumentParser, default_name: str, what: str = "new or empty output folder") -> None:
    """``--output FOLDER`` (default derived from the command and its inputs), ``--overwrite``
    (``--force`` is kept as a hidden alias) and ``--no-progress``."""
    parser.add_argument("--output", metavar="FOLDER", default=None, help=f"{what} (default: {default_name})")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty output folder, replacing files of the same names")
    parser.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def output_folder(args: argparse.Namespace, command: str, data: Any) -> Path:
    """``--output``, or the folder named after ``command``, ``data`` and the weights; refused
    (before any work) when it holds files and ``--overwrite`` is not given."""
    return usable_output_folder(args.output or default_output_folder(command, args.weights, data, args.which),
                                args.overwrite)


def add_picture_input(parser: argparse.ArgumentParser, default_output: str) -> None:
    """What the commands that draw on a ViT's tokens take: WEIGHTS, INPUT (an image, an image
    folder, a numbered frame folder or a video file), ``--video``, ``--device`` and the output."""
    add_weights(parser, "; a ViT")
    parser.add_argument("input", metavar="INPUT", help="image file, image folder, frame folder or video file")
    parser.add_argument("--video", action="store_true", help="INPUT is a folder of numbered video frames")
    add_device(parser)
    add_output(parser, default_output)


@dataclass(frozen=True)
class Option:
    """A command-line option that sets settings fields (``section.field``; usually one)."""

    flag: str
    fields: tuple[str, ...]
    help: str
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra argparse arguments (type, nargs, metavar, action)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def option(flag: str, field: str | tuple[str, ...], help: str, **kwargs: Any) -> Option:
    fields = (field,) if isinstance(field, str) else tuple(field)
    return Option(flag, fields, help, tuple(kwargs.items()))


def short_side_option(section: str) -> Option:
    """``--short-side PX`` for ``section.short_side``."""
    return option("--short-side", f"{section}.short_side", "resize so the short side has PX pixels (aspect ratio "
                  "kept)", type=int, metavar="PX")


def fraction_option(section: str) -> Option:
    """``--fraction`` for ``section.fraction``: the attention mass a mask keeps."""
    return option("--fraction", f"{section}.fraction", "attention mass the masks keep", type=float)


def video_options(section: str) -> list[Option]:
    """``--video-name`` and ``--fps`` of the video a picture command writes (``section.video_name``,
    ``section.fps``)."""
    return [option("--video-name", f"{section}.video_name", "video file written in the output folder: .gif, or .mp4 "
                   "with PyAV", metavar="NAME"),
            option("--fps", f"{section}.fps", "frames per second of the video", type=float)]


def _default(sections: dict[str, type], dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    fields = {f.name: f for f in dataclasses.fields(sections[section])}
    f = fields[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def add_settings(parser: argparse.ArgumentParser, sections: dict[str, type], options: list[Option]) -> None:
    """``KEY=VALUE`` overrides (positional), ``--config FILE`` and one option per listed field;
    options default to "not given" so that a YAML file or an override is not undone by them."""
    names = ", ".join(sections)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                        help=f"settings overrides, section.field=value (sections: {names})")
    parser.add_argument("--config", metavar="FILE", help=f"YAML file with the settings sections ({names})")
    for opt in options:
        kwargs = dict(opt.kwargs)
        shown = _shown(_default(sections, opt.fields[0]))
        help_text = f"{opt.help} (default: {shown}; setting {', '.join(opt.fields)})"
        parser.add_argument(opt.flag, dest=opt.dest, default=argparse.SUPPRESS, help=help_text, **kwargs)


def read_settings(args: argparse.Namespace, sections: dict[str, type], options: list[Option]) -> dict[str, Any]:
    """Each section's dataclass from its defaults <- ``--config`` <- ``KEY=VALUE`` <- options."""
    values: dict[str, Any] = read_yaml_mapping(args.config) if getattr(args, "config", None) else {}
    values = apply_overrides(values, list(getattr(args, "overrides", []) or []))
    for opt in options:
        if hasattr(args, opt.dest):
            for field in opt.fields:
                section, name = field.split(".", 1)
                values.setdefault(section, {})[name] = getattr(args, opt.dest)
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown settings section; this command has {', '.join(sections)}")
    return {name: build_dataclass(cls, values.get(name, {}), f"{name}.") for name, cls in sections.items()}


def parse_overrides_in(unknown: list[str]) -> tuple[list[str], Optional[str]]:
    """Split arguments argparse did not place into ``KEY=VALUE`` overrides and the first other
    argument (None when there is none)."""
    overrides, other = [], None
    for item in unknown:
        if "=" in item and not item.startswith("-"):
            overrides.append(item)
        elif other is None:
            other = item
    return overrides, other


def backbone_harness(args: argparse.Namespace) -> BackboneHarness:
    """The backbone ``WEIGHTS`` / ``--which`` name on ``--device`` (``--tf32``), with the
    command's ``--batch-size`` / ``--num-workers`` where it has them, and ``--no-progress``.
    Load it (``.load()``) after the command's inputs are checked: it may download released weights."""
    batches = {name: getattr(args, name) for name in ("batch_size", "num_workers") if hasattr(args, name)}
    return BackboneHarness(weights=args.weights, which=args.which, device=args.device, tf32=args.tf32,
                           progress=not getattr(args, "no_progress", False), **batches)
