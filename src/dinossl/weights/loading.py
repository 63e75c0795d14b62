"""Strict loading: every missing, unexpected or mis-shaped key is reported in one
:class:`~dinossl.errors.CheckpointError` that names them, and says which architecture the file
holds when it is not the model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dinossl.errors import CheckpointError
from dinossl.models import (
    BackboneSpec,
    DINOHead,
    MultiCropNetwork,
    build_backbone,
    spec_of,
)
from dinossl.weights.layout import name_keys
from dinossl.weights.sources import read_backbone_state, read_network_weights
from dinossl.weights.spec import infer_head_spec, infer_spec

_BN_COUNTER = "num_batches_tracked"


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
    problems = [f"missing: {name_keys(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected: {name_keys(unexpected)}")
    if misshaped:
        parts = [f"{name_keys(keys, 4)} {shapes}" for shapes, keys in list(misshaped.items())[:6]]
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


def load_backbone(path: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None,
                  **options: Any) -> nn.Module:
    """A backbone (in eval mode) built for and loaded from ``path``; the architecture is inferred
    from the tensors unless ``spec`` is given. ``options`` go to the backbone's constructor
    (:func:`~dinossl.models.build_backbone`, e.g. ``drop_path_rate``)."""
    state = read_backbone_state(path, which)
    file_spec = _try_infer(state)
    spec = spec or file_spec or infer_spec(state)
    backbone = _materialise(lambda: build_backbone(spec, **options), state, str(path), _mismatch(file_spec, spec))
    return backbone.eval()


def load_backbone_into(backbone: nn.Module, path: str | Path, which: str = "teacher") -> None:
    """Load ``path``'s backbone weights into an existing backbone (strict); the error says which
    architecture the file holds when it is not the backbone's."""
    state = read_backbone_state(path, which)
    load_state_strict(backbone, state, source=str(path), context=_mismatch(_try_infer(state), spec_of(backbone)))


def load_network(path: str | Path, which: str = "teacher", spec: Optional[BackboneSpec] = None) -> nn.Module:
    """Backbone + DINO head (a :class:`~dinossl.models.MultiCropNetwork`, eval mode) from a
    training checkpoint or network state dict of this project or the reference."""
    weights = read_network_weights(path, which)
    if not weights.head:
        raise CheckpointError(f"{path} holds a backbone only, no DINO head; use load_backbone")
    file_spec = _try_infer(weights.backbone)
    spec = spec or file_spec or infer_spec(weights.backbone)
    backbone = _materialise(lambda: build_backbone(spec), weights.backbone, str(path), _mismatch(file_spec, spec))
    h = infer_head_spec(weights.head, weights.settings)
    if h.in_dim != backbone.embed_dim:
        raise CheckpointError(f"{path}: the head takes {h.in_dim} features, the backbone gives {backbone.embed_dim}")
    head = _materialise(
        lambda: DINOHead(h.in_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.use_bn, h.norm_last_layer),
        weights.head, f"{path} (head)",
    )
    head.last_layer.weight_g.requires_grad_(not h.norm_last_layer)
    return MultiCropNetwork(backbone, head).eval()
