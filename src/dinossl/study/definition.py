"""What a study is: one base training configuration and a list of named variants of it.

A study file is YAML::

    description: one paragraph shown in study.md
    base:                      # a training configuration: an optional preset, then sections
      preset: vit-tiny-cifar
      train: {epochs: 3, knn_every: 1}
    variants:
      - name: no-centering     # letters, digits, '.', '_' and '-': the variant's run folder
        overrides: [loss.centering=none]

Shipped studies (``presets/*.yaml``): ``collapse``, ``components``, ``teacher``, ``multicrop``.
Each variant's configuration is: defaults <- base preset <- base sections <- ``--config`` file
<- command-line ``KEY=VALUE`` <- the variant's overrides, validated like ``dino train``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from dinossl.config import Config, config_from_dict, preset_values
from dinossl.config.merge import apply_overrides, merge, read_yaml_mapping
from dinossl.errors import ConfigError

PRESET_SUFFIX = ".yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RESERVED = ("study",)  # study.md, study.png, study.json, study.yaml live beside the variants


@dataclass(frozen=True)
class Variant:
    """One run of a study: its name (and folder) and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return " ".join(self.overrides) if self.overrides else "(base)"


@dataclass(frozen=True)
class Study:
    """A base configuration (nested settings, with an optional ``preset``) and its variants."""

    name: str
    description: str
    base: dict[str, Any]
    variants: tuple[Variant, ...]


def study_names() -> list[str]:
    """Names of the studies shipped in ``dinossl/study/presets/``."""
    folder = resources.files("dinossl.study").joinpath("presets")
    return sorted(p.name[: -len(PRESET_SUFFIX)] for p in folder.iterdir() if p.name.endswith(PRESET_SUFFIX))


def _preset_file(name: str) -> Any:
    return resources.files("dinossl.study").joinpath("presets").joinpath(name + PRESET_SUFFIX)


def load_study(name_or_path: str | Path) -> Study:
    """A shipped study by name, or a study file."""
    text = str(name_or_path)
    if text in study_names():
        with resources.as_file(_preset_file(text)) as path:
            return study_from_dict(text, read_yaml_mapping(path, "study file"))
    path = Path(text)
    if not path.suffix and not path.exists():
        raise ConfigError(f"unknown study {text!r}: name a shipped study ({', '.join(study_names())}) "
                          "or a study YAML file")
    return study_from_dict(path.stem, read_yaml_mapping(path, "study file"))


def study_from_dict(name: str, values: dict[str, Any]) -> Study:
    """Check a study file's mapping: known keys, a base mapping, named variants with overrides."""
    unknown = sorted(set(values) - {"description", "base", "variants"})
    if unknown:
        raise ConfigError(f"study {name}: unknown key {unknown[0]!r}; a study has description, base, variants")
    base = values.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"study {name}: base must be a mapping of config sections (and optionally preset)")
    raw_variants = values.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"study {name}: variants must be a non-empty list of {{name, overrides}}")
    variants: list[Variant] = []
    for index, item in enumerate(raw_variants, start=1):
        if not isinstance(item, dict) or set(item) - {"name", "overrides"} or "name" not in item:
            raise ConfigError(f"study {name}: variant {index} must be a mapping with name and overrides")
        variant_name = str(item["name"])
        if not _NAME.match(variant_name) or variant_name.lower().startswith(_RESERVED):
            raise ConfigError(f"study {name}: variant name {variant_name!r} must be a folder name (letters, digits, "
                              "'.', '_', '+', '-') not starting with 'study'")
        overrides = item.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"study {name}: variant {variant_name}: overrides must be a list of KEY=VALUE strings")
        variants.append(Variant(variant_name, tuple(overrides)))
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"study {name}: variant {twice[0]!r} is listed twice")
    return Study(name, str(values.get("description", "")).strip(), base, tuple(variants))


def variant_configs(study: Study, config_file: Optional[str | Path] = None,
                    overrides: Optional[list[str]] = None) -> list[tuple[Variant, Config]]:
    """Each variant's validated configuration (a ConfigError names the variant and the field)."""
    base = dict(study.base)
    preset = base.pop("preset", None)
    values: dict[str, Any] = preset_values(str(preset)) if preset is not None else {}
    values = merge(values, base)
    if config_file is not None:
        loaded = read_yaml_mapping(config_file)
        if "preset" in loaded:
            raise ConfigError(f"{config_file}: a study's base names its preset; leave preset: out of --config")
        values = merge(values, loaded)
    try:
        values = apply_overrides(values, list(overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"study {study.name}: {exc}") from None
    configs = []
    for variant in study.variants:
        try:
            configs.append((variant, config_from_dict(apply_overrides(values, list(variant.overrides)))))
        except ConfigError as exc:
            raise ConfigError(f"study {study.name}, variant {variant.name}: {exc}") from None
    return configs
