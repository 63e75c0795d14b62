"""``dino attention``: per-head attention maps and masks."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Not written yet: registers nothing."""
