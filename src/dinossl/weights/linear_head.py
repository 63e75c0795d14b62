"""Linear classifier heads on frozen features: written by ``dino eval linear``
(``linear_head.safetensors`` + ``linear_head.json``), read back from such a folder or file, and
read from the reference's ``*_linearweights.pth`` files.

The reference's files hold ``{"state_dict": {"module.linear.weight", "module.linear.bias"}, ...}``
and record neither the features nor the classes; with ``avgpool`` the reference interleaves
the [CLS] and mean-patch features (``[cls_0, avg_0, cls_1, avg_1, ...]``), where this package
concatenates them (:func:`dinossl.models.probe_features`): the weight's columns are reordered
on reading, so the same head gives the same logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file

from dinossl.errors import CheckpointError
from dinossl.safe_files import read_weights_file, write_atomic
from dinossl.weights.layout import name_keys
from dinossl.weights.registry import fetch, is_url

HEAD_NAME = "linear_head.safetensors"
HEAD_INFO_NAME = "linear_head.json"
HEAD_KEYS = ("linear.weight", "linear.bias")
FORMAT = "dinossl linear head"


@dataclass
class LinearHead:
    """A linear head: ``weight`` (C, D), ``bias`` (C,), the features it reads and what is known
    of its training (``info``: classes, image settings, accuracy, source weights...)."""

    weight: torch.Tensor
    bias: torch.Tensor
    n_last_blocks: int = 1
    avgpool: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under the keys of :class:`~dinossl.models.LinearProbe`'s ``linear``."""
        return {"linear.weight": self.weight, "linear.bias": self.bias}


def write_linear_head(folder: str | Path, head: LinearHead) -> tuple[Path, Path]:
    """``linear_head.safetensors`` and ``linear_head.json`` in ``folder``, atomically (replaced)."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_atomic(folder / HEAD_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    record = {"format": FORMAT, "num_classes": head.num_classes, "feature_dim": head.feature_dim,
              "n_last_blocks": head.n_last_blocks, "avgpool": head.avgpool, **head.info}
    text = json.dumps(record, indent=2) + "\n"
    write_atomic(folder / HEAD_INFO_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder / HEAD_NAME, folder / HEAD_INFO_NAME


def _checked(state: dict[str, torch.Tensor], source: str) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [k for k in HEAD_KEYS if k not in state]
    unexpected = [k for k in state if k not in HEAD_KEYS]
    if missing or unexpected:
        parts = ([f"missing: {name_keys(missing)}"] if missing else []) + (
            [f"unexpected: {name_keys(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{source} is not a linear head ({'; '.join(parts)})")
    weight, bias = state["linear.weight"], state["linear.bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{source}: linear.weight {tuple(weight.shape)} and linear.bias {tuple(bias.shape)} "
                              "are not a (classes, features) layer and its (classes,) bias")
    return weight.float(), bias.float()


def from_reference_order(weight: torch.Tensor, n_last_blocks: int, avgpool: bool, source: str) -> torch.Tensor:
    """The reference's (C, 2d) weight over interleaved [CLS]/mean-patch features -> this
    package's (C, 2d) over concatenated ones; unchanged without ``avgpool``."""
    if not avgpool:
        return weight
    if n_last_blocks != 1:
        raise CheckpointError(f"{source}: the reference's avgpool features exist with n_last_blocks=1 only, "
                              f"not {n_last_blocks}")
    if weight.shape[1] % 2:
        raise CheckpointError(f"{source}: {weight.shape[1]} features cannot be [CLS] + mean patch token")
    return torch.cat([weight[:, 0::2], weight[:, 1::2]], dim=1)


def _head_files(source: Path) -> tuple[Path, Optional[Path]]:
    """(tensor file, JSON record or None) of a head folder or file."""
    if source.is_dir():
        tensors = source / HEAD_NAME
        if not tensors.is_file():
            raise CheckpointError(f"{source} holds no {HEAD_NAME} (written by dino eval linear)")
        return tensors, source / HEAD_INFO_NAME
    return source, source.with_suffix(".json") if source.with_suffix(".json").is_file() else None


def read_linear_head(source: str | Path, n_last_blocks: Optional[int] = None, avgpool: Optional[bool] = None,
                     cache_dir: Optional[str | Path] = None) -> LinearHead:
    """A head from a ``dino eval linear`` folder or ``linear_head.safetensors`` (features read
    from its JSON), or from the reference's ``*_linearweights.pth`` (a path or URL; the features
    are ``n_last_blocks`` / ``avgpool``, default 1 / False). Given ``n_last_blocks`` / ``avgpool``
    that contradict a JSON record are refused."""
    local = fetch(str(source), cache_dir) if is_url(str(source)) else Path(source)
    if not local.exists():
        raise CheckpointError(f"linear head {local} does not exist")
    tensors_file, info_file = _head_files(local)
    raw = read_weights_file(tensors_file)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):  # the reference's layout
        state = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
        weight, bias = _checked(state, str(source))
        n, pool = n_last_blocks or 1, bool(avgpool)
        info = {"source": str(source), "layout": "reference", **(
            {"reference_best_acc": float(raw["best_acc"])} if isinstance(raw.get("best_acc"), (int, float)) else {})}
        return LinearHead(from_reference_order(weight, n, pool, str(source)), bias, n, pool, info)
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{source} is not a linear head file")
    weight, bias = _checked(raw, str(source))
    info: dict[str, Any] = json.loads(info_file.read_text()) if info_file is not None and info_file.is_file() else {}
    n = int(info.get("n_last_blocks", n_last_blocks or 1))
    pool = bool(info.get("avgpool", bool(avgpool)))
    for name, given, recorded in (("n_last_blocks", n_last_blocks, n), ("avgpool", avgpool, pool)):
        if given is not None and given != recorded:
            raise CheckpointError(f"{source} was trained on features with {name}={recorded}, not {given}")
    extra = {k: v for k, v in info.items() if k not in ("format", "num_classes", "feature_dim", "n_last_blocks", "avgpool")}
    return LinearHead(weight, bias, n, pool, {"source": str(source), **extra})


__all__ = ["FORMAT", "HEAD_INFO_NAME", "HEAD_NAME", "LinearHead", "from_reference_order",
           "read_linear_head", "write_linear_head"]
