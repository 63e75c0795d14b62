"""A run folder's identity and the resume policy: its config.yaml and checkpoint decide whether
a run may use the folder, and which settings may change when a run is resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from dinossl.config import Config
from dinossl.config.merge import merge
from dinossl.errors import CheckpointError, DinoError
from dinossl.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

CONFIG_NAME = "config.yaml"

# Fields that do not change what a run computes: they may differ when resuming.
RUNTIME_FIELDS = frozenset(
    {
        "data.path",
        "data.num_workers",
        "train.device",
        "train.log_every",
        "train.progress_bar",
        "train.knn_at_end",
        "train.knn_every",
        "train.knn_student",
        "train.dist_timeout_s",
        "train.threads",
        "train.batch_size_per_process",
        "train.tf32",  # how a CUDA device rounds fp32 products, like train.device
        "train.checkpoint_every_steps",
        "train.keep_every",
        "train.val_data",
        "train.attention_every",
        "train.attention_images",
        "train.logger",
        "train.logger_project",
        # speed levers: the same computation up to float rounding (and drop-path's draw order)
        "train.compile",
        "train.pack_crops",
        "train.activation_checkpointing",
        "train.host_allocator",
        "optim.implementation",
    }
)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_fields(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of fields that change the computation and differ between two configs.

    Fields the stored config lacks (written before they existed) count as their default.
    """
    a, b = flatten(merge(Config().to_dict(), stored)), flatten(current)
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in RUNTIME_FIELDS and a.get(n) != b.get(n)]


def _listed(fields: list[str]) -> str:
    return ", ".join(fields[:6]) + ("..." if len(fields) > 6 else "")


def check_run_folder(output_dir: Path, config: Config) -> Optional[dict[str, Any]]:
    """Refuse a folder that belongs to a run of another configuration (naming the fields that
    differ); return its checkpoint when it holds one of this configuration (resume)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DinoError(f"output {output_dir} exists and is not a folder")
    current = config.to_dict()
    config_file = output_dir / CONFIG_NAME
    if config_file.is_file():
        try:
            stored = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DinoError(f"{config_file} is not valid YAML ({exc}); not touching that folder") from exc
        changed = differing_fields(stored, current)
        if changed:
            raise DinoError(f"output folder {output_dir} holds another run (its {CONFIG_NAME} differs in "
                            f"{_listed(changed)}); choose another output folder")
    checkpoint_file = output_dir / CHECKPOINT_NAME
    if not checkpoint_file.is_file():
        return None
    checkpoint = read_checkpoint(checkpoint_file)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "student" not in checkpoint:
        raise CheckpointError(f"{checkpoint_file} is not a dinossl training checkpoint; choose another output folder")
    changed = differing_fields(checkpoint["config"], current)
    if changed:
        raise CheckpointError(f"{checkpoint_file} was written by a run with a different configuration "
                              f"({_listed(changed)}); choose another output folder")
    return checkpoint


def write_run_config(output_dir: Path, config: Config) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG_NAME).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

