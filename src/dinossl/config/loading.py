"""A run's configuration: defaults <- preset <- YAML file <- ``section.field=value`` overrides
<- typed updates (command-line options), then validation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from dinossl.config.merge import apply_overrides, build_dataclass, merge, read_yaml_mapping
from dinossl.config.schema import Config
from dinossl.config.validation import validate
from dinossl.errors import ConfigError

DEFAULT_PRESET = "vit-tiny-cifar"
PRESET_SUFFIX = ".yaml"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``dinossl/config/presets/``."""
    folder = resources.files("dinossl.config").joinpath("presets")
    return sorted(p.name[: -len(PRESET_SUFFIX)] for p in folder.iterdir() if p.name.endswith(PRESET_SUFFIX))


def preset_values(name: str) -> dict[str, Any]:
    """The nested settings of a shipped preset."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"preset: unknown preset {name!r}; choose from {', '.join(names)}")
    text = resources.files("dinossl.config").joinpath("presets").joinpath(name + PRESET_SUFFIX).read_text()
    return yaml.safe_load(text) or {}


def load_config(
    preset: Optional[str] = None,
    yaml_path: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
    updates: Optional[dict[str, Any]] = None,
) -> Config:
    """Defaults <- preset <- YAML file <- dotted overrides <- ``updates`` (a nested dict of
    already-typed values, e.g. from command-line options), then validation.

    The preset is ``preset`` when given, else the YAML file's top-level ``preset:`` key, else
    none (the reference's defaults).
    """
    loaded = read_yaml_mapping(yaml_path) if yaml_path is not None else {}
    file_preset = loaded.pop("preset", None)
    base_preset = preset if preset is not None else file_preset
    values: dict[str, Any] = preset_values(base_preset) if base_preset is not None else {}
    values = merge(values, loaded)
    values = apply_overrides(values, overrides or [])
    if updates:
        values = merge(values, updates)
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    config = build_dataclass(Config, values)
    validate(config)
    return config


def file_preset(yaml_path: str | Path) -> Optional[str]:
    """The ``preset:`` a YAML config file names, if any."""
    value = read_yaml_mapping(yaml_path).get("preset")
    return None if value is None else str(value)
