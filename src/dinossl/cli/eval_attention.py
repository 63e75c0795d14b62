"""``dino eval masks|video`` (issue: attention masks and video segmentation)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Not written yet: registers nothing."""
