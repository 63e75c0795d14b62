"""Separable Gaussian blur of a batch, each sample with its own standard deviation.

Sample i is convolved with a normalised Gaussian of standard deviation sigma_i truncated at
radius r_i = min(ceil(3 sigma_i), max_radius) taps, edges extended by replication (as PIL's
GaussianBlur, whose ``radius`` is this standard deviation). All kernels are zero-padded to the
batch's largest radius so the whole batch is two grouped convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRUNCATE = 3.0  # kernel half-width in standard deviations


def kernel_radius(sigma: float, size: int) -> int:
    """Half-width in taps of the kernel for ``sigma`` on a ``size``-pixel image (at most size - 1)."""
    return max(0, min(math.ceil(TRUNCATE * sigma), size - 1))


def gaussian_kernels(sigma: torch.Tensor, max_radius: int) -> torch.Tensor:
    """(N,) standard deviations (> 0) -> (N, 2 * max_radius + 1) normalised 1-D kernels; taps
    beyond a sample's own radius min(ceil(3 sigma), max_radius) are zero."""
    taps = torch.arange(-max_radius, max_radius + 1, device=sigma.device, dtype=torch.float32)
    sigma = sigma.float().reshape(-1, 1)
    own_radius = torch.ceil(TRUNCATE * sigma).clamp(max=max_radius)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2) * (taps.abs() <= own_radius)
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_radius: int) -> torch.Tensor:
    """Blur (N, C, H, W) float images with per-sample ``sigma`` (N,); returns (N, C, H, W).

    ``max_radius`` (a host integer, so no device sync) bounds every kernel; pass
    ``kernel_radius(max(sigma), min(H, W))``.
    """
    n, c, h, w = images.shape
    if n == 0 or max_radius == 0:
        return images.clone()
    kernels = gaussian_kernels(sigma, max_radius).to(images.dtype)  # (N, K)
    size = kernels.shape[1]
    weight = kernels.repeat_interleave(c, dim=0)  # (N * C, K): one kernel per (sample, channel)
    flat = images.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (max_radius, max_radius, 0, 0), mode="replicate"),
                    weight.reshape(n * c, 1, 1, size), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, max_radius, max_radius), mode="replicate"),
                    weight.reshape(n * c, 1, size, 1), groups=n * c)
    return flat.reshape(n, c, h, w)
