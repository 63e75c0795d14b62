"""Layout of a weights object: which tensors are the backbone, which the head.

Works on what :func:`dinossl.safe_files.read_weights_file` returned, never on files: removes
``module.`` / ``_orig_mod.`` wrappers and ``backbone.`` / ``head.`` prefixes, picks the
``teacher`` or ``student`` network of a training checkpoint, renames the head's
parametrization keys to ``last_layer.weight_g/weight_v``, and names keys in error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from dinossl.errors import CheckpointError
from dinossl.safe_files import ForeignObject

NETWORKS = ("teacher", "student")
_WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_HEAD_RENAMES = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


@dataclass
class NetworkWeights:
    """Tensors of one network read from a file, with reference prefixes removed.

    ``backbone``: released layout (``cls_token``, ``blocks.0.norm1.weight``, ...).
    ``head``: DINO head in this project's names (``mlp.0.weight``, ``last_layer.weight_g``,
    ``last_layer.weight_v``); empty for backbone-only files.
    ``settings``: model settings recorded by the run (this project's ``config['model']`` or
    the reference's ``args``), empty when the file has none.
    """

    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    training_checkpoint: bool = False


def check_which(which: str) -> None:
    if which not in NETWORKS:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")


def pick_network(raw: Any, which: str, source: str) -> NetworkWeights:
    """The ``which`` network of ``raw`` (a read weights file): a training checkpoint's
    ``teacher``/``student`` entry, a ``state_dict``/``model`` entry, or the state dict itself."""
    check_which(which)
    if isinstance(raw, dict) and any(_is_tensor_dict(raw.get(name)) for name in NETWORKS):
        if not _is_tensor_dict(raw.get(which)):
            raise CheckpointError(f"{source}: training checkpoint without a '{which}' state dict")
        backbone, head = split_network(raw[which], source)
        return NetworkWeights(backbone, head, _run_settings(raw), training_checkpoint=True)
    if _is_tensor_dict(raw):
        state = raw
    elif isinstance(raw, dict) and any(_is_tensor_dict(raw.get(k)) for k in ("state_dict", "model")):
        state = raw["state_dict"] if _is_tensor_dict(raw.get("state_dict")) else raw["model"]
    else:
        entries = ", ".join(map(str, list(raw)[:10])) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{source}: holds no state dict of tensors nor a 'teacher'/'student' entry ({entries})")
    if which == "student":
        raise CheckpointError(f"{source} holds a single network, not a training checkpoint with a 'student' entry")
    backbone, head = split_network(state, source)
    return NetworkWeights(backbone, head)


def split_network(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(backbone, head) of a state dict in either layout: plain backbone, or backbone./head.
    A student's ``predictor.`` tensors (a training-only ablation) are left out."""
    unwrapped = {_unwrap(k): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in unwrapped):
        return unwrapped, {}
    backbone, head, other = {}, {}, []
    for key, value in unwrapped.items():
        part, _, rest = key.partition(".")
        if part == "backbone":
            backbone[_unwrap(rest)] = value
        elif part == "head":
            rest = _unwrap(rest)
            head[_HEAD_RENAMES.get(rest, rest)] = value
        elif part != "predictor":
            other.append(key)
    if other:
        raise CheckpointError(f"{source}: keys outside backbone./head.: {name_keys(other)}")
    return backbone, head


def _unwrap(key: str) -> str:
    """Remove leading ``module.`` / ``_orig_mod.`` wrappers."""
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    return key


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _run_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Model settings stored beside the weights: this project's config or the reference's args."""
    config = raw.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return dict(config["model"])
    args = raw.get("args")
    return args.fields() if isinstance(args, ForeignObject) else {}


def name_keys(keys: list[str], limit: int = 12) -> str:
    """Keys joined, ViT blocks folded (``blocks.{0-11}.norm1.weight``), at most ``limit`` entries."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = re.match(r"(.*?)blocks\.(\d+)\.(.*)", key)
        if match:
            pattern = f"{match.group(1)}blocks.{{}}.{match.group(3)}"
            groups.setdefault(pattern, []).append(int(match.group(2)))
        else:
            groups.setdefault(key, [])
    # Patterns with the same block indices share one entry: blocks.{2-11}.{norm1.weight,norm1.bias}
    by_indices: dict[tuple, list[str]] = {}
    for pattern, indices in groups.items():
        group = (pattern.split("{}")[0], tuple(sorted(indices))) if indices else (pattern, ())
        by_indices.setdefault(group, []).append(pattern)
    names = []
    for (lead, indices), patterns in by_indices.items():
        if not indices:
            names.append(lead)
            continue
        run = list(indices) == list(range(indices[0], indices[-1] + 1)) and len(indices) > 1
        where = f"{{{indices[0]}-{indices[-1]}}}" if run else (
            str(indices[0]) if len(indices) == 1 else "{" + ",".join(map(str, indices)) + "}")
        tails = [p.split("{}.", 1)[1] for p in patterns]
        names.append(f"{lead}{where}." + (tails[0] if len(tails) == 1 else "{" + ",".join(tails) + "}"))
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
