"""The ``dino`` command: argument parsing only; each subcommand calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from dinossl.errors import DinoError

# Subcommand modules each define register(subparsers) and set ``func`` on their parser.
SUBCOMMANDS = ("train", "eval", "attention", "export", "dedupe")


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
    import importlib

    parser = argparse.ArgumentParser(prog="dino", description="DINO self-distillation with no labels.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dinossl.cli.{name}").register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging()
    try:
        result = args.func(args)
    except DinoError as exc:
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 or not exc.same_on_all_ranks:
            where = f" (rank {rank})" if rank else ""
            print(f"dino {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dino {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
