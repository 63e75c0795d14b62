"""``dino eval ...``: evaluations grouped under one command."""

from __future__ import annotations

import argparse
import importlib

# Modules that each define register(eval_subparsers).
EVAL_GROUPS: tuple[str, ...] = ("eval_features", "eval_attention", "eval_retrieval")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint or released weights")
    eval_subparsers = parser.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for name in EVAL_GROUPS:
        importlib.import_module(f"dinossl.cli.{name}").register(eval_subparsers)
