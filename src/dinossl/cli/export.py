"""``dino export``: write a checkpoint's backbone in the released layout."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Not written yet: registers nothing."""
