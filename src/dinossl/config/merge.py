"""The settings engine: YAML files and ``a.b=value`` overrides merged into nested dicts, then
typed into dataclasses field by field.

It knows nothing of DINO: any dataclass of ``int``/``float``/``str``/``bool``/``Optional``/
fixed-length ``tuple`` fields (and nested dataclasses) can be filled this way, which is how the
training config and the evaluation settings are read. Every problem raises one
:class:`~dinossl.errors.ConfigError` that names the field.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from dinossl.errors import ConfigError

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: {}); duplicate keys and bad YAML are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of settings")
    return loaded


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of ``base`` with ``update`` merged in, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"optim.base_lr=1e-3"`` into (["optim", "base_lr"], 0.001) using YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides take the form key=value (e.g. section.field=value)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text}: overrides take the form key=value (e.g. section.field=value)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``values`` with each ``a.b=value`` override set (later ones win)."""
    values = copy.deepcopy(values)
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys)}: unknown configuration key")
        node[keys[-1]] = value
    return values


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``name``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return coerce(value, args[0], name)
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(coerce(v, item_types[0], name) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{name}: expected a list of {len(item_types)} numbers, got {value!r}")
        return tuple(coerce(v, t, name) for v, t in zip(value, item_types))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r} for {name}")


def build_dataclass(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys; fields not in
    ``values`` keep their defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown configuration key")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = build_dataclass(hint, values[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(values[f.name], hint, prefix + f.name)
    return cls(**kwargs)


def settings_from(cls: type[T], yaml_path: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
                  updates: Optional[dict[str, Any]] = None) -> T:
    """A settings dataclass from its defaults <- a YAML file <- ``key=value`` overrides <- ``updates``
    (already-typed values, e.g. from command-line options)."""
    values: dict[str, Any] = read_yaml_mapping(yaml_path) if yaml_path is not None else {}
    values = apply_overrides(values, overrides or [])
    if updates:
        values = merge(values, updates)
    return build_dataclass(cls, values)
