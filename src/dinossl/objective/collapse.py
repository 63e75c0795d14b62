"""Collapse diagnostics: recognise the two collapsed states of DINO from logged statistics.

Uniform collapse: the teacher output is uniform, its entropy is ln K and the student copies
it (KL -> 0). Dimensional collapse: one dimension dominates, teacher entropy -> 0 (KL -> 0
too). A healthy run keeps the entropy between the two and the KL above zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class CollapseMonitor:
    """Counts consecutive log records that look collapsed and says so once it persists.

    Args:
        out_dim: K, the head's output dimension.
        patience: consecutive collapsed records before a warning.
        kl_eps: KL below this (nats) counts as "student equals teacher".
        entropy_frac: entropy within this fraction of 0 or of ln K counts as collapsed.
    """

    out_dim: int
    patience: int = 5
    kl_eps: float = 1e-3
    entropy_frac: float = 0.02
    _streak: int = 0
    _warned: bool = False

    def state_dict(self) -> dict[str, int | bool]:
        """The counters a mid-epoch checkpoint keeps."""
        return {"streak": self._streak, "warned": self._warned}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        self._streak, self._warned = int(state["streak"]), bool(state["warned"])

    def kind(self, teacher_entropy: float, kl: float) -> str | None:
        """"uniform", "dimensional" or None for one record."""
        if kl > self.kl_eps:
            return None
        max_entropy = math.log(self.out_dim)
        if teacher_entropy >= (1 - self.entropy_frac) * max_entropy:
            return "uniform"
        if teacher_entropy <= self.entropy_frac * max_entropy:
            return "dimensional"
        return None

    def update(self, teacher_entropy: float, kl: float) -> str | None:
        """Feed one record; returns a warning message the first time collapse persists."""
        kind = self.kind(teacher_entropy, kl)
        self._streak = self._streak + 1 if kind else 0
        if kind and self._streak >= self.patience and not self._warned:
            self._warned = True
            if kind == "uniform":
                hint = ("teacher output is uniform (entropy ~ ln K = %.2f) and KL ~ 0: lower the teacher "
                        "temperature (loss.teacher_temp) or the center momentum, and check the augmentations"
                        % math.log(self.out_dim))
            else:
                hint = ("one output dimension dominates (teacher entropy ~ 0) and KL ~ 0: raise the "
                        "teacher temperature or check that centering is active (loss.center_momentum < 1)")
            return f"collapse detected ({kind}) for {self._streak} consecutive log records: {hint}"
        return None
