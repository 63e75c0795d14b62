"""DINO projection head: MLP, L2 normalisation, weight-normalised prototype layer.

The L2 normalisation and the prototype layer always compute in float32, also under autocast:
the logits are cosines (|z| <= 1) that the loss divides by temperatures as low as 0.04, so a
bf16 output (8 significant bits) would round them to about 2e-3 before that division.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op where there is no autocast)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


NORM_EPS = 1e-12  # F.normalize's floor on a row norm


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is ``g * v / ||v||`` row by row.

    Parameters carry the names and the order of ``torch.nn.utils.weight_norm`` (``weight_g``
    K x 1 first, then ``weight_v`` K x in), as in the reference and its checkpoints, so
    parameter lists (and optimiser states) line up position by position. ``v`` starts as
    nn.Linear's weight and ``g`` at 1 (the reference fills it with 1); with ``fix_norm`` ``g``
    stays 1 (frozen), so the layer only learns directions.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)  # nn.Linear's default

    @property
    def weight(self) -> torch.Tensor:
        """Effective weight (K, in)."""
        return self.weight_g * F.normalize(self.weight_v, dim=1, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> (B, K) float32, whatever autocast is active (the input is cast to float32).

        Computed as ``(x v^T) * (g / ||v||)`` column by column, which equals ``x (g v / ||v||)^T``
        up to float rounding but never materialises the normalised (K, in) weight: with
        K = 65,536 that weight and its backward were a fifth of a CPU training step."""
        with float32_region(x.device):
            v = self.weight_v.float()
            scale = self.weight_g.float().squeeze(1) / torch.linalg.vector_norm(v, dim=1).clamp_min(NORM_EPS)
            return F.linear(x.float(), v) * scale


class DINOHead(nn.Module):
    """Linear(d, h)-GELU-Linear(h, h)-GELU-Linear(h, b), L2-normalise, WeightNormLinear(b, K).

    ``use_bn`` puts a BatchNorm after each hidden Linear (for convnets). Keys follow the
    reference layout: ``mlp.{0,2,4}`` (with BN ``mlp.{0,1,3,4,6}``) and ``last_layer``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, hidden_dim))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) backbone features -> (B, K) float32 logits; the MLP follows autocast, the
        normalisation and the last layer compute in float32."""
        x = self.mlp(features)
        with float32_region(x.device):
            x = F.normalize(x.float(), dim=-1, p=2)
            return self.last_layer(x)
