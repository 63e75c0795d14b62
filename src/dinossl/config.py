"""Typed configuration of a DINO run: presets, YAML files, dotted overrides, validation.

A run is described by one :class:`Config` made of five sections that follow the data flow
(data -> model -> loss -> optim -> train). Every value can be set from YAML or from the
command line as ``section.field=value``; an unknown key or an impossible value raises
:class:`~dinossl.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from dinossl.errors import ConfigError

VIT_ARCHS = ("vit_tiny", "vit_small", "vit_base")
ARCHS = VIT_ARCHS + ("resnet50",)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PHOTOMETRIC_PLACES = ("loader", "device")
GEOMETRIC_MODES = ("per_image", "batched")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class CropConfig:
    """Multi-crop views: 2 global crops and ``num_local`` local crops per image."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    num_local: int = 8
    blur_radius: tuple[float, float] = (0.1, 2.0)  # Gaussian blur radius range, in pixels
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2


@dataclass
class DataConfig:
    """Where images come from and how they are loaded."""

    path: Optional[str] = None  # None: the CIFAR-10 sample shipped inside the package
    crops: CropConfig = field(default_factory=CropConfig)
    num_workers: int = 4
    # Where colour jitter, grayscale, blur, solarisation and normalisation run: "loader" (per
    # image, PIL/torchvision in the loader workers) or "device" (batched on the training device;
    # the loader only crops, flips and draws the parameters). See the README, "Where the photometric augmentation runs".
    photometric: str = "loader"
    # How crops are cut: "per_image" (PIL, in the loader workers) or "batched" (one batched
    # resize per view in the training process; needs photometric=device and images of one size,
    # held in memory). See the README, "Where the augmentation runs".
    geometric: str = "per_image"


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224  # size the position embeddings are laid out for
    depth: Optional[int] = None  # None: the architecture's standard depth (12)
    drop_path: float = 0.1  # student only; the teacher never drops paths
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True


@dataclass
class LossConfig:
    """Temperatures and centering of the DINO objective."""

    student_temp: float = 0.1
    teacher_temp: float = 0.04  # final teacher temperature
    warmup_teacher_temp: float = 0.04  # starting teacher temperature
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9


@dataclass
class OptimConfig:
    """AdamW, its schedules and the teacher momentum."""

    base_lr: float = 5e-4  # per 256 images of global batch
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per parameter tensor; 0 disables
    freeze_last_layer: int = 1  # epochs during which the head's last layer is not updated
    momentum_teacher: float = 0.996
    optimizer: str = "adamw"  # adamw (the paper's choice) or sgd (momentum 0.9, for ResNets)


@dataclass
class TrainConfig:
    """Loop length, batch, precision, logging and checkpoints."""

    epochs: int = 100
    batch_size_per_process: int = 64
    precision: str = "auto"  # auto: bf16 (or fp16) on GPU, fp32 on CPU
    device: str = "auto"
    seed: int = 0
    log_every: int = 10  # steps between JSON log lines
    progress_bar: bool = True
    knn_at_end: bool = False  # print k-NN top-1 of the teacher vs. random init at the end
    knn_every: int = 0  # epochs between k-NN checks of the teacher (built-in sample only); 0: never
    dist_timeout_s: int = 600  # process-group timeout: a dead peer ends the run after this
    threads: int = 0  # torch CPU threads; 0 leaves torch's default


@dataclass
class Config:
    """One DINO run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), safe for JSON, YAML and checkpoints."""
        return _plain(dataclasses.asdict(self))


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
        "train.dist_timeout_s",
        "train.threads",
        "train.batch_size_per_process",
    }
)

PRESETS: dict[str, dict[str, Any]] = {
    # Small ViT on 32-px images, sized for a 2-core CPU. `dino train` with no argument uses
    # it on the CIFAR-10 sample shipped inside the package.
    "vit-tiny-cifar": {
        # Sized for about 10 minutes on 2 CPU cores (5 epochs of the 10,000-image sample); the values
        # come from the CPU sweeps described in the README ("The default run").
        "data": {
            "crops": {
                "global_size": 32,
                "global_scale": [0.4, 1.0],
                "local_size": 16,
                "local_scale": [0.1, 0.4],
                "num_local": 4,
                "blur_radius": [0.1, 1.0],  # the reference's 0.1-2.0 px erases much of a 32-px image
                # SimCLR-strength jitter: with the reference's (0.4, 0.4, 0.2, 0.1) a short run learns
                # colour statistics and its k-NN stays at the random-init level (README).
                "color_jitter": [0.8, 0.8, 0.8, 0.2],
            },
            "photometric": "device",  # 2x the loader pipeline's crops/s on 2 CPU cores (README)
            "geometric": "batched",  # no loader worker competing for the 2 cores (README)
        },
        "model": {
            "arch": "vit_tiny",
            "patch_size": 8,
            "img_size": 32,
            "depth": 4,
            "drop_path": 0.1,
            "out_dim": 256,
            "head_hidden_dim": 512,
            "head_bottleneck_dim": 64,
        },
        "loss": {"teacher_temp": 0.04, "warmup_teacher_temp": 0.04},
        "optim": {
            "base_lr": 4e-3,
            "warmup_epochs": 1,
            "weight_decay": 0.04,
            "weight_decay_end": 0.1,
            "momentum_teacher": 0.99,
        },
        "train": {"epochs": 5, "batch_size_per_process": 32, "knn_at_end": True},
    },
    # The paper's ViT-S/16 recipe (reference defaults, with the paper's teacher warm-up).
    "vit-small-imagenet": {
        "model": {"arch": "vit_small", "patch_size": 16, "img_size": 224, "out_dim": 65536},
        "loss": {
            "teacher_temp": 0.07,
            "warmup_teacher_temp": 0.04,
            "warmup_teacher_temp_epochs": 30,
        },
        "optim": {"base_lr": 5e-4, "warmup_epochs": 10, "clip_grad": 3.0},
        "train": {"epochs": 100, "batch_size_per_process": 64},
        "data": {"num_workers": 10},
    },
    # ViT-B/16 as released: smaller teacher temperature, no last-layer normalisation.
    "vit-base-imagenet": {
        "model": {"arch": "vit_base", "patch_size": 16, "img_size": 224, "norm_last_layer": False},
        "loss": {
            "teacher_temp": 0.07,
            "warmup_teacher_temp": 0.04,
            "warmup_teacher_temp_epochs": 50,
        },
        "optim": {"base_lr": 7.5e-4, "min_lr": 2e-6, "clip_grad": 0.3, "freeze_last_layer": 3},
        "train": {"epochs": 400, "batch_size_per_process": 32},
        "data": {"num_workers": 10},
    },
    # ResNet-50 as in the reference's convnet command (SGD, smaller crop scales).
    "resnet50-imagenet": {
        "model": {
            "arch": "resnet50",
            "drop_path": 0.0,
        },
        "loss": {"teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 50},
        "optim": {"optimizer": "sgd", "base_lr": 0.03, "min_lr": 0.0048, "weight_decay": 1e-4,
                  "weight_decay_end": 1e-4, "clip_grad": 0.0, "momentum_teacher": 0.996},
        "data": {"crops": {"global_scale": [0.14, 1.0], "local_scale": [0.05, 0.14], "num_local": 6},
                 "num_workers": 10},
        "train": {"epochs": 100, "batch_size_per_process": 64},
    },
}
DEFAULT_PRESET = "vit-tiny-cifar"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``name``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(value, args[0], name)
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{name}: expected a list of {len(item_types)} numbers, got {value!r}")
        return tuple(_coerce(v, t, name) for v, t in zip(value, item_types))
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


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys."""
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
            kwargs[f.name] = _build(hint, values[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(values[f.name], hint, prefix + f.name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"optim.base_lr=1e-3"`` into (["optim", "base_lr"], 0.001) using YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides take the form section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text}: overrides take the form section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(
    preset: Optional[str] = None,
    yaml_path: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
    updates: Optional[dict[str, Any]] = None,
) -> Config:
    """Defaults <- preset <- YAML file <- dotted overrides <- ``updates`` (a nested dict of
    already-typed values, e.g. from command-line options), then validation.

    A YAML file may name its base preset with a top-level ``preset:`` key; an explicit
    ``preset`` argument takes precedence over it.
    """
    loaded: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    base_preset = preset if preset is not None else loaded.pop("preset", None)
    loaded.pop("preset", None)
    values: dict[str, Any] = {}
    if base_preset is not None:
        if base_preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {base_preset!r}; choose from {', '.join(PRESETS)}")
        values = _merge(values, PRESETS[base_preset])
    values = _merge(values, loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = values
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys)}: unknown configuration key")
        node[keys[-1]] = value
    if updates:
        values = _merge(values, updates)
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    config = _build(Config, values, "")
    validate(config)
    return config


def validate(c: Config) -> None:
    """Raise ConfigError naming the first field whose value is impossible."""

    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{name}: {why}")

    m, d, cr, lo, o, t = c.model, c.data, c.data.crops, c.loss, c.optim, c.train
    need(m.arch in ARCHS, "model.arch", f"unknown architecture {m.arch!r}; choose from {', '.join(ARCHS)}")
    need(m.patch_size > 0, "model.patch_size", f"must be positive, got {m.patch_size}")
    need(m.img_size > 0, "model.img_size", f"must be positive, got {m.img_size}")
    need(m.depth is None or m.depth > 0, "model.depth", f"must be positive, got {m.depth}")
    need(0.0 <= m.drop_path < 1.0, "model.drop_path", f"must be in [0, 1), got {m.drop_path}")
    need(m.out_dim > 0, "model.out_dim", f"must be positive, got {m.out_dim}")
    need(m.head_hidden_dim > 0, "model.head_hidden_dim", f"must be positive, got {m.head_hidden_dim}")
    need(m.head_bottleneck_dim > 0, "model.head_bottleneck_dim", f"must be positive, got {m.head_bottleneck_dim}")
    need(cr.global_size > 0, "data.crops.global_size", f"must be positive, got {cr.global_size}")
    need(cr.local_size > 0, "data.crops.local_size", f"must be positive, got {cr.local_size}")
    need(cr.num_local >= 0, "data.crops.num_local", f"must be >= 0, got {cr.num_local}")
    need(0.0 <= cr.blur_radius[0] <= cr.blur_radius[1], "data.crops.blur_radius",
         f"must satisfy 0 <= min <= max, got {list(cr.blur_radius)}")
    need(all(v >= 0 for v in cr.color_jitter) and cr.color_jitter[3] <= 0.5, "data.crops.color_jitter",
         f"needs brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5, got {list(cr.color_jitter)}")
    for name in ("color_jitter_p", "grayscale_p"):
        need(0.0 <= getattr(cr, name) <= 1.0, f"data.crops.{name}", f"must be in [0, 1], got {getattr(cr, name)}")
    for name, (lo_s, hi_s) in (("data.crops.global_scale", cr.global_scale), ("data.crops.local_scale", cr.local_scale)):
        need(0.0 < lo_s <= hi_s <= 1.0, name, f"must satisfy 0 < min <= max <= 1, got {[lo_s, hi_s]}")
    if m.arch in VIT_ARCHS:
        need(m.img_size % m.patch_size == 0, "model.img_size",
             f"{m.img_size} is not divisible by model.patch_size={m.patch_size}")
        need(cr.global_size % m.patch_size == 0, "data.crops.global_size",
             f"{cr.global_size} is not divisible by model.patch_size={m.patch_size}")
        if cr.num_local > 0:
            need(cr.local_size % m.patch_size == 0, "data.crops.local_size",
                 f"{cr.local_size} is not divisible by model.patch_size={m.patch_size}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    need(d.photometric in PHOTOMETRIC_PLACES, "data.photometric",
         f"unknown place {d.photometric!r}; choose from {', '.join(PHOTOMETRIC_PLACES)}")
    need(d.geometric in GEOMETRIC_MODES, "data.geometric",
         f"unknown mode {d.geometric!r}; choose from {', '.join(GEOMETRIC_MODES)}")
    need(d.geometric != "batched" or d.photometric == "device", "data.geometric",
         "batched crops need data.photometric=device")
    need(lo.student_temp > 0, "loss.student_temp", f"must be positive, got {lo.student_temp}")
    need(lo.teacher_temp > 0, "loss.teacher_temp", f"must be positive, got {lo.teacher_temp}")
    need(lo.warmup_teacher_temp > 0, "loss.warmup_teacher_temp", f"must be positive, got {lo.warmup_teacher_temp}")
    need(lo.warmup_teacher_temp_epochs >= 0, "loss.warmup_teacher_temp_epochs",
         f"must be >= 0, got {lo.warmup_teacher_temp_epochs}")
    need(0.0 <= lo.center_momentum < 1.0, "loss.center_momentum", f"must be in [0, 1), got {lo.center_momentum}")
    for name in ("base_lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        value = getattr(o, name)
        need(math.isfinite(value) and value >= 0, f"optim.{name}", f"must be >= 0, got {value}")
    need(o.base_lr > 0, "optim.base_lr", f"must be positive, got {o.base_lr}")
    need(o.warmup_epochs >= 0, "optim.warmup_epochs", f"must be >= 0, got {o.warmup_epochs}")
    need(o.freeze_last_layer >= 0, "optim.freeze_last_layer", f"must be >= 0, got {o.freeze_last_layer}")
    need(o.optimizer in OPTIMIZERS, "optim.optimizer", f"unknown optimizer {o.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    need(0.0 <= o.momentum_teacher <= 1.0, "optim.momentum_teacher", f"must be in [0, 1], got {o.momentum_teacher}")
    need(t.epochs > 0, "train.epochs", f"must be positive, got {t.epochs}")
    need(t.batch_size_per_process > 0, "train.batch_size_per_process",
         f"must be positive, got {t.batch_size_per_process}")
    need(t.precision in PRECISIONS, "train.precision", f"unknown precision {t.precision!r}; choose from {', '.join(PRECISIONS)}")
    need(t.log_every > 0, "train.log_every", f"must be positive, got {t.log_every}")
    need(t.dist_timeout_s > 0, "train.dist_timeout_s", f"must be positive, got {t.dist_timeout_s}")
    need(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    need(t.knn_every >= 0, "train.knn_every", f"must be >= 0, got {t.knn_every}")


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
    a, b = flatten(_merge(Config().to_dict(), stored)), flatten(current)
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in RUNTIME_FIELDS and a.get(n) != b.get(n)]
