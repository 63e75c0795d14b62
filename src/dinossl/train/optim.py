"""Optimiser: parameter groups without weight decay for 1-D tensors, per-tensor clipping,
the first-epoch freeze of the head's last layer."""

from __future__ import annotations

import torch
from torch import nn

from dinossl.config import OptimConfig


def parameter_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with weight decay, biases and all 1-D parameters without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


FUSED_DEVICE_TYPES = ("cpu", "cuda")  # where torch's fused AdamW and SGD kernels run


def implementation_options(implementation: str, device_type: str) -> dict[str, bool]:
    """torch.optim keyword arguments for ``optim.implementation``: "fused" (one kernel updates
    all tensors), "foreach" (one kernel per operation over all tensors), "for_loop" (tensor by
    tensor), "auto" (fused on CPUs and GPUs, else torch's default). They compute the same update
    up to float rounding."""
    if implementation == "fused" or (implementation == "auto" and device_type in FUSED_DEVICE_TYPES):
        return {"fused": True}
    if implementation == "foreach":
        return {"foreach": True}
    if implementation == "for_loop":
        return {"foreach": False}
    return {}


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999) or SGD with momentum 0.9 over the model's parameters (already on
    their device); lr and weight decay are set per step."""
    groups = parameter_groups(model)
    device_type = next(model.parameters()).device.type
    options = implementation_options(config.implementation, device_type)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, **options)
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), **options)


def set_lr_and_weight_decay(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply this iteration's scheduled values (weight decay only to the decayed group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_wd", True):
            group["weight_decay"] = weight_decay


@torch.no_grad()
def clip_gradients_per_tensor(parameters: list[torch.Tensor], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= max_norm, tensor by tensor, without host sync."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    scales = torch._foreach_norm(grads)  # -> min(1, max_norm / (norm + 1e-6)), per tensor
    torch._foreach_add_(scales, 1e-6)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)


def drop_last_layer_gradients(model: nn.Module) -> None:
    """Remove the head's last-layer gradients so the optimiser leaves it unchanged."""
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
