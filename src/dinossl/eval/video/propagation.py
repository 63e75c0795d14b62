"""Label propagation between frames by feature affinity (DINO's video segmentation step).

Each target patch looks at the source patches (of all context frames) within a square
neighbourhood of ``radius`` patches around its own position, keeps the ``topk`` with the
highest cosine similarity, weights them by exp(cos / temperature) normalised over those k
(a softmax over the top k) and averages their soft labels.

The target grid is processed in tiles: a tile of T x T targets is compared only with the
(T + 2r) x (T + 2r) source window around it, so memory is O(T^2 (T + 2r)^2 n) instead of the
O((h w)^2 n) of a dense affinity, and the work is done by one matrix product per tile.
"""

from __future__ import annotations

from typing import Optional

import torch

DEFAULT_RADIUS = 12
DEFAULT_TOPK = 5
DEFAULT_TEMPERATURE = 0.1


def _window(start: int, stop: int, radius: Optional[int], size: int) -> tuple[int, int]:
    if radius is None:
        return 0, size
    return max(0, start - radius), min(size, stop + radius)


def _far_bias(top: int, height: int, window_h: int, left: int, width: int, window_w: int, radius: int,
              dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(height * width, 1, window_h * window_w) additive bias: 0 where a source lies within
    ``radius`` of the target (tile offsets ``top``/``left`` inside its window), -inf elsewhere."""
    def near(size: int, offset: int, window: int) -> torch.Tensor:  # (size, window) bool
        targets = torch.arange(size, device=device)[:, None] + offset
        return (targets - torch.arange(window, device=device)).abs() <= radius

    near_y, near_x = near(height, top, window_h), near(width, left, window_w)
    inside = (near_y[:, None, :, None] & near_x[None, :, None, :]).reshape(height * width, 1, -1)
    far = torch.zeros(inside.shape, dtype=dtype, device=device)
    return far.masked_fill_(~inside, float("-inf"))


@torch.no_grad()
def propagate_labels(
    target: torch.Tensor,
    sources: torch.Tensor,
    source_labels: torch.Tensor,
    radius: Optional[int] = DEFAULT_RADIUS,
    topk: int = DEFAULT_TOPK,
    temperature: float = DEFAULT_TEMPERATURE,
    tile: int = 16,
) -> torch.Tensor:
    """Soft labels of the target frame.

    Args:
        target: (d, h, w) L2-normalised patch features of the target frame.
        sources: (n, d, h, w) L2-normalised features of the n context frames.
        source_labels: (n, C, h, w) soft labels of the context frames.
        radius: neighbourhood half-size in patches (Chebyshev distance); None = whole frame.
        topk: number of source patches each target patch averages.
        temperature: affinity exp(cos / temperature).
        tile: side of the target tiles processed at once.

    Returns:
        (C, h, w) propagated soft labels (each patch's labels sum as its sources' do).
    """
    n, d, h, w = sources.shape
    if target.shape != (d, h, w):
        raise ValueError(f"target features {tuple(target.shape)} do not match sources {tuple(sources.shape)}")
    if source_labels.shape[0] != n or source_labels.shape[2:] != (h, w):
        raise ValueError(f"labels {tuple(source_labels.shape)} do not match sources {tuple(sources.shape)}")
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be >= 0 or None, got {radius}")
    if topk < 1 or temperature <= 0 or tile < 1:
        raise ValueError("topk and tile must be >= 1 and temperature > 0")
    classes = source_labels.shape[1]
    queries_all = target.permute(1, 2, 0)  # (h, w, d)
    keys_all = sources.permute(0, 2, 3, 1).contiguous()  # (n, h, w, d): windows copy whole rows
    labels_all = source_labels.permute(0, 2, 3, 1).contiguous()  # (n, h, w, C)
    out = source_labels.new_zeros(h, w, classes)
    biases: dict[tuple[int, ...], torch.Tensor] = {}  # interior tiles share one neighbourhood bias
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        sy0, sy1 = _window(y0, y1, radius, h)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            sx0, sx1 = _window(x0, x1, radius, w)
            queries = queries_all[y0:y1, x0:x1].reshape(-1, d)  # (t, d)
            keys = keys_all[:, sy0:sy1, sx0:sx1].reshape(-1, d)  # (n * S, d)
            similarity = queries @ keys.T  # (t, n * S)
            if radius is not None:
                key = (y0 - sy0, y1 - y0, sy1 - sy0, x0 - sx0, x1 - x0, sx1 - sx0)
                if key not in biases:
                    biases[key] = _far_bias(*key, radius, similarity.dtype, similarity.device)
                far = biases[key]  # (t, 1, S): 0 inside the neighbourhood, -inf outside
                similarity.view(queries.shape[0], n, -1).add_(far)
            values, index = similarity.topk(min(topk, similarity.shape[1]), dim=1)
            weights = torch.softmax(values / temperature, dim=1)  # (t, k); -inf entries weigh 0
            labels = labels_all[:, sy0:sy1, sx0:sx1].reshape(-1, classes)  # (n * S, C)
            tile_labels = (weights.unsqueeze(-1) * labels[index]).sum(dim=1)  # (t, C)
            out[y0:y1, x0:x1] = tile_labels.reshape(y1 - y0, x1 - x0, classes)
    return out.permute(2, 0, 1).contiguous()
