"""``dino eval ...``: the evaluations, grouped under one command."""

from __future__ import annotations

import argparse

from dinossl.cli import eval_attention, eval_classification, eval_retrieval
from dinossl.cli.common import HelpFormatter

EVAL_GROUPS = (eval_classification, eval_attention, eval_retrieval)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint or released weights",
                                   formatter_class=HelpFormatter)
    eval_subparsers = parser.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for module in EVAL_GROUPS:
        module.register(eval_subparsers)
