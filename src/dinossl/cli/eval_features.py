"""``dino eval knn|linear|finetune`` (issue: frozen-feature evaluation)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Not written yet: registers nothing."""
