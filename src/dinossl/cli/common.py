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
from typing import Any, Optional

from dinossl.config.merge import apply_overrides, build_dataclass, read_yaml_mapping
from dinossl.errors import ConfigError
from dinossl.inference import BackboneHarness
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
