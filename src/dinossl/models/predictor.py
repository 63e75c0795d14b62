"""The predictor of the paper's Table 7 row 6: a BYOL-style MLP on the student's head output.

Only the student has one; the teacher's output is compared with the student's prediction.
"""

from __future__ import annotations

import torch
from torch import nn


class Predictor(nn.Module):
    """Linear(K, h) - BatchNorm1d(h) - GELU - Linear(h, K), with the head's initialisation
    (truncated normal, std 0.02; zero biases). Keys: ``mlp.{0,1,3}``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) head output -> (B, K) predicted teacher logits."""
        return self.mlp(logits)
