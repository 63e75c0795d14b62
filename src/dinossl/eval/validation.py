"""Checks of evaluation settings: a DinoError naming the offending field."""

from __future__ import annotations

from typing import Any

from dinossl.errors import DinoError


def require_positive(settings: Any, *fields: str) -> None:
    """Every named field of ``settings`` must be > 0."""
    for name in fields:
        value = getattr(settings, name)
        if not value > 0:
            raise DinoError(f"{type(settings).__name__}.{name} must be positive, got {value}")


def require_non_negative(settings: Any, *fields: str) -> None:
    """Every named field of ``settings`` must be >= 0."""
    for name in fields:
        value = getattr(settings, name)
        if not value >= 0:
            raise DinoError(f"{type(settings).__name__}.{name} must be >= 0, got {value}")


PROTOCOLS = ("dinossl", "reference")  # an evaluation's own protocol, or the reference script's, where they differ


def require_choice(settings: Any, name: str, choices: tuple[str, ...]) -> None:
    """The named field of ``settings`` must be one of ``choices``."""
    value = getattr(settings, name)
    if value not in choices:
        raise DinoError(f"{type(settings).__name__}.{name} must be one of {', '.join(choices)}, got {value!r}")
