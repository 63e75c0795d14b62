"""DINO projection head: MLP, L2 normalisation, weight-normalised prototype layer.

The L2 normalisation and the prototype layer's forward always compute in float32, also under
autocast: the logits are cosines (|z| <= 1) that the loss divides by temperatures as low as
0.04, so a bf16 output (8 significant bits) would round them to about 2e-3 before that
division. Its backward's two matmuls take operands of the autocast dtype, as every other
layer's backward under autocast does: their rounding is small beside that of the gradients
arriving from the rest of a bf16 network (``tests/models/test_head.py``).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op where there is no autocast)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast computes matmuls in on ``device``'s type, None when autocast is off."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


NORM_EPS = 1e-12  # F.normalize's floor on a row norm


class _NormalisedLinear(torch.autograd.Function):
    """y = (x v^T) * s with s = g / ||v|| row by row of v: the output of ``x (g v / ||v||)^T``
    without materialising the normalised (K, in) weight, and a hand-written backward that
    allocates only the gradients themselves plus one (B, K) temporary.

    Backward, with q = sum_b dy (x v^T) over the batch (per output k):
    dx = (dy * s) v; dv = (dy * s)^T x - (s q / ||v||^2) v; dg = q / ||v||.
    Rows of v whose norm is below ``NORM_EPS`` use the floor as their norm (as F.normalize
    does) and get no gradient through it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                backward_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """x (B, in), v (K, in), g (K, 1), all float32 -> y (B, K) float32; ``backward_dtype``
        (bf16 or fp16): the dtype of the backward's two matmul operands (float32 if None)."""
        norm = torch.linalg.vector_norm(v, dim=1)
        floored = norm.clamp_min(NORM_EPS)
        scale = g.squeeze(1) / floored
        products = F.linear(x, v)  # (B, K) = x v^T
        learn_norm = ctx.needs_input_grad[2]
        # With g frozen the backward needs only y = products * scale, so scale in place.
        y = products * scale if learn_norm else products.mul_(scale)
        ctx.learn_norm, ctx.backward_dtype = learn_norm, backward_dtype
        ctx.save_for_backward(x, v, floored, scale, norm > NORM_EPS, products if learn_norm else y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, v, floored, scale, normed, saved = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        work = grad_y * saved  # (B, K) temporary: dy * (x v^T), or dy * y with g frozen
        column_sums = work.sum(dim=0)  # q with g learned, s * q with g frozen
        q_scaled = column_sums * scale if ctx.learn_norm else column_sums
        low = ctx.backward_dtype  # operands of the autocast dtype, as every other layer's backward
        grad_x = grad_v = grad_g = None
        if low is None:  # float32: s folded into dy, one (B, K) product
            scaled_grad = torch.mul(grad_y, scale, out=work)  # dy * s, reusing the temporary
            if ctx.needs_input_grad[0]:
                grad_x = scaled_grad @ v
            if ctx.needs_input_grad[1]:
                grad_v = scaled_grad.t() @ x  # (K, in)
        else:
            # Low precision: s stays out of the operands, which are those the reference's
            # backward has (dy as the loss scaler sized it, unit rows s v, the unit-norm x), so
            # no operand nor product exceeds the reference's range: with fp16 (largest 65,504)
            # dy * s overflowed once weight decay had shrunk ||v|| (s = g / ||v|| > 1), and
            # v alone underflows into fp16's subnormals. Sums over K are bounded by ||dy||_1.
            low_grad = grad_y.to(low)
            if ctx.needs_input_grad[0]:
                grad_x = (low_grad @ (v * scale.unsqueeze(1)).to(low)).float()
            if ctx.needs_input_grad[1]:
                grad_v = (low_grad.t() @ x.to(low)).float().mul_(scale.unsqueeze(1))  # (K, in)
        if ctx.needs_input_grad[1]:
            through_norm = (-q_scaled / floored.square()).masked_fill_(~normed, 0.0)
            grad_v.addcmul_(v, through_norm.unsqueeze(1))
        if ctx.learn_norm:
            grad_g = (column_sums / floored).unsqueeze(1)
        return grad_x, grad_v, grad_g, None


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

    def forward(self, x: torch.Tensor, backward_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """(B, in) -> (B, K) float32, whatever autocast is active (the input is cast to float32).

        Computed as ``(x v^T) * (g / ||v||)`` column by column (:class:`_NormalisedLinear`),
        which equals ``x (g v / ||v||)^T`` up to float rounding but never materialises the
        normalised (K, in) weight: with K = 65,536 that weight and its backward were a fifth
        of a CPU training step. ``backward_dtype`` (the caller's autocast dtype): the backward's
        two matmuls take operands of that dtype; None (default): float32."""
        with float32_region(x.device):
            return _NormalisedLinear.apply(x.float(), self.weight_v.float(), self.weight_g.float(), backward_dtype)


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
        normalisation and the last layer's forward compute in float32 (its backward's matmuls
        in the autocast dtype)."""
        x = self.mlp(features)
        backward_dtype = autocast_dtype(x.device)  # read before the float32 region turns autocast off
        with float32_region(x.device):
            x = F.normalize(x.float(), dim=-1, p=2)
            return self.last_layer(x, backward_dtype)
