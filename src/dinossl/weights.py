"""Read, check and write backbone (and head) weights in the reference DINO layout.

Accepted inputs, as ``.pth`` or ``.safetensors``:

* backbone-only state dicts: the released DINO files, timm ``vit_*_patch*_224.dino`` state
  dicts, ``dino export`` output (plain keys: ``cls_token``, ``blocks.0.attn.qkv.weight``, ...);
* network state dicts (``backbone.*`` / ``head.*``);
* full training checkpoints of this project or of the reference code (``teacher`` and
  ``student`` entries, ``module.`` prefixes, head ``last_layer.weight_g/weight_v`` or the
  parametrization names ``parametrizations.weight.original0/1``).

Safety: ``.pth`` files are unpickled with ``weights_only=True``. The reference's pickled
``argparse.Namespace`` (and pathlib paths) are mapped to :class:`ForeignObject`, an inert
record that never imports nor calls anything; any other global refuses the whole file.

Strictness: every missing, unexpected or mis-shaped key is reported in one
:class:`~dinossl.errors.CheckpointError` that names them.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from dinossl.errors import CheckpointError

FORMATS = ("pth", "safetensors")
NETWORKS = ("teacher", "student")
_WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_BN_COUNTER = "num_batches_tracked"


# ---------------------------------------------------------------------------------------------
# Safe reading
# ---------------------------------------------------------------------------------------------


class ForeignObject:
    """Inert stand-in for an object of an allowed foreign class found in a checkpoint.

    Unpickling creates it instead of the real class: it stores the constructor arguments and
    the pickled state and does nothing else, so no code of the original class ever runs.
    """

    foreign_name: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> "ForeignObject":
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any) -> None:  # REDUCE calls cls(*args): keep it inert
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def fields(self) -> dict[str, Any]:
        """The object's pickled attributes (an argparse.Namespace's arguments), or {}."""
        state = self.state[0] if isinstance(self.state, tuple) and self.state else self.state
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"ForeignObject({self.foreign_name}, args={self.args!r}, state={self.state!r})"


# Classes whose pickles appear in training checkpoints (the reference's ``args``) and that are
# read as ForeignObject records. Anything else outside torch's weights_only set is refused.
INERT_GLOBALS: tuple[str, ...] = (
    "argparse.Namespace",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "pathlib._local.PosixPath",
    "pathlib._local.WindowsPath",
)
_STAND_INS = [
    (type(name.rsplit(".", 1)[1], (ForeignObject,), {"foreign_name": name}), name) for name in INERT_GLOBALS
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a pickle that needs more than tensors and plain data."""
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) format: only the unpickler's message is available
        names = []
    if names:
        what = f"it would import {', '.join(sorted(set(names)))}"
    else:  # torch's message starts with advice to retry unsafely: keep only the reason
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
    return CheckpointError(
        f"{path}: refused to unpickle ({what}); loading it could run code, and only tensors and "
        "plain data are read (torch.load weights_only=True)"
    )


def _sniff(path: Path) -> Optional[str]:
    """'torch' (zip or legacy pickle), 'safetensors' or None, from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch zip archive / legacy pickle protocol 2+
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    return None


def read_weights_file(path: str | Path) -> Any:
    """The object stored in ``path`` (safetensors: dict of tensors; else torch.save data),
    read without running code from the file; the reference's ``args`` become ForeignObject."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    kind = _sniff(path)
    if kind is None:
        raise CheckpointError(f"{path}: not a PyTorch (.pth) nor a safetensors file")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch or safetensors file ({_first_line(exc)})") from exc


# ---------------------------------------------------------------------------------------------
# Layout: which tensors are the backbone, which the head
# ---------------------------------------------------------------------------------------------


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


def _unwrap(key: str) -> str:
    """Remove leading ``module.`` / ``_orig_mod.`` wrappers."""
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    return key


_HEAD_RENAMES = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _split_network(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(backbone, head) of a state dict in either layout: plain backbone, or backbone./head."""
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
        else:
            other.append(key)
    if other:
        raise CheckpointError(f"{source}: keys outside backbone./head.: {_name_keys(other)}")
    return backbone, head


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _run_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Model settings stored beside the weights: this project's config or the reference's args."""
    config = raw.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return dict(config["model"])
    args = raw.get("args")
    return args.fields() if isinstance(args, ForeignObject) else {}


def local_file(source: str | Path) -> Path:
    """``source`` as a local path; a URL or a released-model name (``dino_vits16`` ...) is
    fetched by :func:`dinossl.hub.fetch` into the torch hub cache (once)."""
    if isinstance(source, str) and not Path(source).exists():
        from dinossl import hub

        if hub.is_url(source) or source in hub.RELEASED:
            return hub.fetch(source)
    return Path(source)


def read_network_weights(path: str | Path, which: str = "teacher") -> NetworkWeights:
    """Backbone and head tensors of ``path`` (a file, URL or released-model name); ``which``
    picks the network of a training checkpoint."""
    if which not in NETWORKS:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    raw = read_weights_file(local_file(path))
    source = str(path)
    if isinstance(raw, dict) and any(_is_tensor_dict(raw.get(name)) for name in NETWORKS):
        if not _is_tensor_dict(raw.get(which)):
            raise CheckpointError(f"{source}: training checkpoint without a '{which}' state dict")
        backbone, head = _split_network(raw[which], source)
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
    backbone, head = _split_network(state, source)
    return NetworkWeights(backbone, head)


def read_backbone_state(path: str | Path, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Backbone tensors of a weights file in the released layout (prefixes removed, head dropped).

    ``which`` picks the ``teacher`` (default) or ``student`` network of a training checkpoint.
    """
    weights = read_network_weights(path, which)
    if not weights.backbone:
        raise CheckpointError(f"{path}: the {which} network has no backbone tensors")
    return weights.backbone


# ---------------------------------------------------------------------------------------------
# Architecture: inferred from tensor shapes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone architecture; field names are those of the ``model`` config section."""

    arch: str  # vit_tiny | vit_small | vit_base | resnet50
    patch_size: int = 16
    img_size: int = 224  # size the position embeddings are laid out for
    depth: Optional[int] = None  # None: 12

    def describe(self) -> str:
        if self.arch == "resnet50":
            return "resnet50"
        return f"{self.arch}/{self.patch_size} (depth {self.depth or 12}, img_size {self.img_size})"

    def as_overrides(self) -> str:
        """The config overrides that build this backbone."""
        if self.arch == "resnet50":
            return "model.arch=resnet50"
        return (f"model.arch={self.arch} model.patch_size={self.patch_size} "
                f"model.img_size={self.img_size} model.depth={self.depth or 12}")


_RESNET50_BLOCKS = (3, 4, 6, 3)


def infer_spec(state: dict[str, torch.Tensor]) -> BackboneSpec:
    """Architecture, patch size, position-grid size and depth of a backbone state dict."""
    from dinossl.models.vit import VIT_SIZES

    if "patch_embed.proj.weight" in state:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        arch = next((name for name, (width, _) in VIT_SIZES.items() if width == dim), None)
        if arch is None:
            widths = ", ".join(f"{w} ({n})" for n, (w, _) in VIT_SIZES.items())
            raise CheckpointError(f"ViT width {dim} is not one of {widths}")
        blocks = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))]
        if not blocks:
            raise CheckpointError("ViT weights without any blocks.N.* keys")
        img_size = 224
        if "pos_embed" in state:
            tokens = state["pos_embed"].shape[1] - 1
            grid = int(round(tokens**0.5))
            if grid * grid != tokens:
                raise CheckpointError(f"pos_embed holds {tokens} patch positions, not a square grid")
            img_size = grid * int(patch)
        return BackboneSpec(arch, patch_size=int(patch), img_size=img_size, depth=1 + max(blocks))
    if "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        counts = tuple(
            len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
        )
        if counts != _RESNET50_BLOCKS or "layer1.0.conv3.weight" not in state:
            raise CheckpointError(f"a ResNet with {counts} blocks per stage is not a ResNet-50 {_RESNET50_BLOCKS}")
        return BackboneSpec("resnet50")
    raise CheckpointError(
        "cannot tell the architecture: no patch_embed.proj.weight (ViT) nor conv1/layer4 (ResNet-50) keys "
        f"(keys: {_name_keys(list(state))})"
    )


def spec_of(backbone: nn.Module) -> Optional[BackboneSpec]:
    """The spec of a built backbone (None for a module this project does not build)."""
    from dinossl.models import ResNetBackbone, ViTBackbone
    from dinossl.models.vit import VIT_SIZES

    if isinstance(backbone, ResNetBackbone):
        return BackboneSpec("resnet50")
    if isinstance(backbone, ViTBackbone):
        arch = next((n for n, (w, _) in VIT_SIZES.items() if w == backbone.embed_dim), f"vit{backbone.embed_dim}")
        grid = int(round((backbone.pos_embed.shape[1] - 1) ** 0.5))
        return BackboneSpec(arch, backbone.patch_size, grid * backbone.patch_size, len(backbone.blocks))
    return None


def build_from_spec(spec: BackboneSpec) -> nn.Module:
    """A randomly initialised backbone of architecture ``spec``."""
    from dinossl.models import build_resnet50, build_vit

    if spec.arch == "resnet50":
        return build_resnet50()
    return build_vit(spec.arch, patch_size=spec.patch_size, img_size=spec.img_size, depth=spec.depth)


@dataclass(frozen=True)
class HeadSpec:
    """DINO head sizes (arguments of :class:`~dinossl.models.DINOHead`)."""

    in_dim: int
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    use_bn: bool
    norm_last_layer: bool


def infer_head_spec(head: dict[str, torch.Tensor], settings: Optional[dict[str, Any]] = None) -> HeadSpec:
    """Head sizes from its tensors: Linear weights are 2-D ``mlp.i.weight``, BatchNorms carry
    ``running_mean``. ``norm_last_layer`` comes from the run's settings, else from g == 1."""
    linears = sorted(
        int(m.group(1)) for k, v in head.items() if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)) and v.ndim == 2
    )
    use_bn = any(k.endswith(".running_mean") for k in head)
    if len(linears) != 3 or "last_layer.weight_v" not in head or "last_layer.weight_g" not in head:
        raise CheckpointError(
            f"the DINO head has {len(linears)} hidden Linear layers and "
            f"{'a' if 'last_layer.weight_v' in head else 'no'} weight-normalised last layer; this project's head "
            f"has 3 (reference nlayers=3) and last_layer.weight_g/weight_v (keys: {_name_keys(list(head))})"
        )
    first, last = head[f"mlp.{linears[0]}.weight"], head[f"mlp.{linears[-1]}.weight"]
    settings = settings or {}
    norm = settings.get("norm_last_layer")
    if not isinstance(norm, bool):
        norm = bool(torch.all(head["last_layer.weight_g"] == 1))
    return HeadSpec(
        in_dim=first.shape[1], out_dim=head["last_layer.weight_v"].shape[0], hidden_dim=first.shape[0],
        bottleneck_dim=last.shape[0], use_bn=use_bn, norm_last_layer=norm,
    )


# ---------------------------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------------------------


def _name_keys(keys: list[str], limit: int = 12) -> str:
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


def state_problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """'missing: ...', 'unexpected: ...', 'wrong shape: ...' for ``state`` against ``expected``
    (a module's state dict); BatchNorm ``num_batches_tracked`` counters may be missing."""
    missing = [k for k in expected if k not in state and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state if k not in expected]
    misshaped: dict[str, list[str]] = {}
    for key in expected:
        if key in state and state[key].shape != expected[key].shape:
            shapes = f"{tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
            misshaped.setdefault(shapes, []).append(key)
    problems = [f"missing: {_name_keys(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected: {_name_keys(unexpected)}")
    if misshaped:
        parts = [f"{_name_keys(keys, 4)} {shapes}" for shapes, keys in list(misshaped.items())[:6]]
        more = f" (+{len(misshaped) - 6} more shapes)" if len(misshaped) > 6 else ""
        problems.append("wrong shape: " + ", ".join(parts) + more)
    return problems


def _complete(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus zero BatchNorm counters where the file has none (old torchvision files)."""
    extra = {
        k: torch.zeros((), dtype=torch.long) for k in module.state_dict() if k.endswith(_BN_COUNTER) and k not in state
    }
    return {**state, **extra} if extra else state


def _check_fit(module: nn.Module, state: dict[str, torch.Tensor], source: str, context: str) -> None:
    """Raise one CheckpointError naming every key of ``state`` that does not fit ``module``."""
    problems = state_problems(module.state_dict(), state)
    if problems:
        lead = f"{context}; " if context else ""
        raise CheckpointError(f"{source} does not fit the {type(module).__name__}: {lead}" + "; ".join(problems))


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "weights",
                      context: str = "") -> None:
    """Copy ``state`` into ``module`` after exact key and shape checking; one CheckpointError
    names every offending key. ``context`` is prepended to the problems in that error."""
    _check_fit(module, state, source, context)
    module.load_state_dict(_complete(module, state), strict=True)


def _mismatch(file_spec: Optional[BackboneSpec], model_spec: Optional[BackboneSpec]) -> str:
    if file_spec is None or model_spec is None or file_spec == model_spec:
        return ""
    return (f"the file holds a {file_spec.describe()} backbone, the model is a {model_spec.describe()} "
            f"(build it with {file_spec.as_overrides()})")


def _try_infer(state: dict[str, torch.Tensor]) -> Optional[BackboneSpec]:
    try:
        return infer_spec(state)
    except CheckpointError:
        return None


def _materialise(build, state: dict[str, torch.Tensor], source: str, context: str = "") -> nn.Module:
    """``build()`` on the meta device, checked against ``state`` and given its tensors (no random
    init); falls back to a real build when the module has buffers the state does not hold."""
    with torch.device("meta"):
        module = build()
    _check_fit(module, state, source, context)
    expected = module.state_dict()
    state = _complete(module, state)
    state = {k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        module = build()
        module.load_state_dict(state, strict=True)
    return module


def load_backbone(path: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None) -> nn.Module:
    """A backbone (in eval mode) built for and loaded from ``path``; the architecture is inferred
    from the tensors unless ``spec`` is given."""
    state = read_backbone_state(path, which)
    file_spec = _try_infer(state)
    spec = spec or file_spec or infer_spec(state)
    backbone = _materialise(lambda: build_from_spec(spec), state, str(path), _mismatch(file_spec, spec))
    return backbone.eval()


def load_backbone_into(backbone: nn.Module, path: str | Path, which: str = "teacher") -> None:
    """Load ``path``'s backbone weights into an existing backbone (strict); the error says which
    architecture the file holds when it is not the backbone's."""
    state = read_backbone_state(path, which)
    load_state_strict(backbone, state, source=str(path), context=_mismatch(_try_infer(state), spec_of(backbone)))


def load_network(path: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None) -> nn.Module:
    """Backbone + DINO head (a :class:`~dinossl.models.MultiCropNetwork`, eval mode) from a
    training checkpoint or network state dict of this project or the reference."""
    from dinossl.models import DINOHead, MultiCropNetwork

    weights = read_network_weights(path, which)
    if not weights.head:
        raise CheckpointError(f"{path} holds a backbone only, no DINO head; use load_backbone")
    file_spec = _try_infer(weights.backbone)
    spec = spec or file_spec or infer_spec(weights.backbone)
    backbone = _materialise(lambda: build_from_spec(spec), weights.backbone, str(path), _mismatch(file_spec, spec))
    h = infer_head_spec(weights.head, weights.settings)
    if h.in_dim != backbone.embed_dim:
        raise CheckpointError(f"{path}: the head takes {h.in_dim} features, the backbone gives {backbone.embed_dim}")
    head = _materialise(
        lambda: DINOHead(h.in_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.use_bn, h.norm_last_layer),
        weights.head, f"{path} (head)",
    )
    head.last_layer.weight_g.requires_grad_(not h.norm_last_layer)
    return MultiCropNetwork(backbone, head).eval()


# ---------------------------------------------------------------------------------------------
# Writing the released layout
# ---------------------------------------------------------------------------------------------


def released_state(state: dict[str, torch.Tensor], spec: Optional[BackboneSpec] = None,
                   source: str = "weights") -> dict[str, torch.Tensor]:
    """``state`` checked against the backbone it describes and ordered as its state dict:
    exactly the released keys and shapes (contiguous CPU tensors, values untouched)."""
    spec = spec or infer_spec(state)
    with torch.device("meta"):
        expected = build_from_spec(spec).state_dict()
    problems = state_problems(expected, state)
    if problems:
        raise CheckpointError(f"{source} is not a {spec.describe()} backbone: " + "; ".join(problems))
    return {k: state[k].detach().cpu().contiguous() for k in expected if k in state}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors whose memory another entry already uses (safetensors refuses sharing)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def write_backbone(state: dict[str, torch.Tensor], path: str | Path, fmt: Optional[str] = None,
                   overwrite: bool = False) -> Path:
    """Write a backbone state dict as a plain ``.pth`` state dict or ``.safetensors``, atomically.

    ``fmt`` defaults to the path's suffix. An existing file is kept unless ``overwrite``.
    """
    path = Path(path)
    from dinossl.train.checkpoint import write_atomic  # dinossl.train imports the trainer: only when writing

    fmt = fmt or path.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise CheckpointError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; not overwriting it (use --force / overwrite=True)")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if fmt == "pth":
        write_atomic(path, lambda tmp: torch.save(tensors, tmp))
    else:
        from safetensors.torch import save_file

        write_atomic(path, lambda tmp: save_file(_unshared(tensors), tmp, metadata={"format": "pt"}))
    return path


def default_export_path(checkpoint: str | Path, fmt: str, which: str = "teacher") -> Path:
    """``<folder>/<stem>_<which>_backbone.<fmt>`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_{which}_backbone.{fmt}")


def export_backbone_file(checkpoint: str | Path, output: Optional[str | Path] = None, fmt: Optional[str] = None,
                         which: str = "teacher", overwrite: bool = False) -> tuple[Path, BackboneSpec]:
    """Write the ``which`` backbone of ``checkpoint`` in the released layout; returns the file
    written and its architecture. ``fmt`` defaults to ``output``'s suffix, else ``pth``."""
    if fmt is None:
        fmt = Path(output).suffix.lstrip(".") if output is not None and Path(output).suffix else "pth"
    if fmt not in FORMATS:
        raise CheckpointError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is not None and Path(output).suffix and Path(output).suffix.lstrip(".") != fmt:
        raise CheckpointError(f"output {output} does not end in .{fmt}")
    output = Path(output) if output is not None else default_export_path(checkpoint, fmt, which)
    if output.exists() and not overwrite:  # before the (possibly long) read
        raise CheckpointError(f"{output} exists; not overwriting it (use --force / overwrite=True)")
    state = read_backbone_state(checkpoint, which)
    spec = infer_spec(state)
    return write_backbone(released_state(state, spec, str(checkpoint)), output, fmt, overwrite), spec
