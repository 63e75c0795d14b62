"""The ``dino`` command: argument parsing only; each subcommand calls the library.

Every subcommand module defines ``register(subparsers)`` and sets ``func`` on its parser. Bad
input (a :class:`~dinossl.errors.DinoError`) becomes one line ``dino <command>: error: ...``
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from dinossl import __version__
from dinossl.cli import attention, dedupe, embed, eval_group, export, features, plot, study, train
from dinossl.cli.common import HelpFormatter, parse_overrides_in
from dinossl.errors import DinoError

SUBCOMMANDS = (train, study, eval_group, attention, features, embed, export, dedupe, plot)


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    logger = logging.getLogger("dinossl")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino", description="DINO self-distillation with no labels.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dinossl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse, letting ``KEY=VALUE`` overrides stand anywhere among the options."""
    args, unknown = parser.parse_known_args(argv)
    overrides, other = parse_overrides_in(unknown)
    if other is not None or (overrides and not hasattr(args, "config")):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*getattr(args, "overrides", []), *overrides]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure, 2 bad input, 130 Ctrl-C)."""
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 2
    name = " ".join(part for part in (args.command, getattr(args, "evaluation", None)) if part)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the command as typed (to repeat it)
    _configure_logging()
    try:
        result = args.func(args)
    except DinoError as exc:
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 or not exc.same_on_all_ranks:
            where = f" (rank {rank})" if rank else ""
            print(f"dino {name}{where}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"dino {name}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
