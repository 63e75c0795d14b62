"""PCA whitening learned on a set of descriptors, then L2 normalisation.

Learned: the set's mean m and covariance C = E[(x - m)(x - m)^T] (float64), and C's
eigen-decomposition C = V diag(e) V^T. Eigenvalues below 1e-5 x the largest are raised to
that floor, so a set smaller than the dimension (a singular C) still gives a finite map.
Applied: x -> normalise((x - m) V diag(e)^-1/2), components in decreasing-variance order.

The reference's copy-detection script centres the descriptors on m but takes the eigenvectors
of the uncentred second moment E[x x^T]. ``centred=True`` (the default) uses the covariance,
the usual definition of PCA whitening; ``centred=False`` reproduces the reference (C is then
E[x x^T], everything else unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch.nn import functional as F

from dinossl.errors import DataError

EIGENVALUE_FLOOR = 1e-5


@dataclass(frozen=True)
class Whitening:
    """mean (D,) and projection (D, D), float32; call it on (n, D) rows."""

    mean: torch.Tensor
    projection: torch.Tensor
    samples: int
    floored: int  # eigenvalues raised to the floor
    centred: bool = True  # eigenvectors of the covariance (False: of the uncentred second moment)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, D) descriptors -> (n, D) whitened, L2-normalised rows (on the rows' device)."""
        mean = self.mean.to(rows.device)
        projection = self.projection.to(rows.device)
        return F.normalize((rows.float() - mean) @ projection, dim=1)

    def describe(self) -> dict:
        return {"learned_on": self.samples, "dimension": int(self.mean.shape[0]), "floored_eigenvalues": self.floored,
                "eigenvalue_floor": f"{EIGENVALUE_FLOOR:g} x largest", "centred_covariance": self.centred}


def learn_whitening(chunks: Iterable[torch.Tensor], floor: float = EIGENVALUE_FLOOR,
                    centred: bool = True) -> Whitening:
    """Whitening of the rows of ``chunks`` ((n_i, D) tensors), accumulated chunk by chunk in
    float64 so a memory-mapped set of any size can be used. ``centred=False``: eigenvectors of
    the uncentred second moment, as the reference's copy detection (see the module)."""
    count, total, outer = 0, None, None
    for chunk in chunks:
        chunk = torch.as_tensor(chunk).double().cpu()
        if chunk.numel() == 0:
            continue
        if total is None:
            total = torch.zeros(chunk.shape[1], dtype=torch.float64)
            outer = torch.zeros(chunk.shape[1], chunk.shape[1], dtype=torch.float64)
        count += chunk.shape[0]
        total += chunk.sum(dim=0)
        outer += chunk.T @ chunk
    if count < 2:
        raise DataError(f"whitening needs at least 2 images, got {count}")
    mean = total / count
    covariance = outer / count - (torch.outer(mean, mean) if centred else 0.0)
    covariance = (covariance + covariance.T) / 2
    values, vectors = torch.linalg.eigh(covariance)
    values, vectors = values.flip(0), vectors.flip(1)  # decreasing variance
    lowest = values[0].clamp_min(0) * floor
    floored = int((values < lowest).sum())
    values = values.clamp_min(lowest if lowest > 0 else 1e-12)
    projection = vectors / values.sqrt()
    return Whitening(mean.float(), projection.float(), count, floored, centred)
