"""Video object segmentation scores of one binary mask against its ground truth (DAVIS):
region similarity J (intersection over union) and contour accuracy F (boundary F-measure).

Boundaries are the pixels whose right, lower or lower-right neighbour has the other value;
a predicted boundary pixel matches when a ground-truth boundary pixel lies within a disk of
radius ceil(0.008 x image diagonal) pixels (DAVIS's tolerance), and vice versa.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

BOUNDARY_TOLERANCE = 0.008


def _check(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"masks must be 2-D and of one shape, got {pred.shape} and {truth.shape}")


def region_similarity(pred: np.ndarray, truth: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """J = |pred ∩ truth| / |pred ∪ truth| over non-void pixels of (H, W) boolean masks; 1 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    _check(pred, truth)
    if void is not None:
        pred, truth = pred & ~void, truth & ~void
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right, lower or lower-right neighbour differs (inside the image)."""
    mask = np.asarray(mask, bool)
    edge = np.zeros_like(mask)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return edge


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool dilated by a disk of ``radius`` pixels.

    The disk is a stack of horizontal runs: row offset dy covers |dx| <= floor(sqrt(r^2 - dy^2)),
    so the dilation is the union over dy of vertically shifted horizontal dilations, each an
    O(H W) prefix-sum test.
    """
    mask = np.asarray(mask, bool)
    if radius <= 0:
        return mask.copy()
    height, width = mask.shape
    prefix = np.zeros((height, width + 1), np.int32)
    np.cumsum(mask, axis=1, out=prefix[:, 1:])
    columns = np.arange(width)
    out = np.zeros_like(mask)
    runs: dict[int, np.ndarray] = {}
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        if half not in runs:
            right = np.minimum(columns + half + 1, width)
            left = np.maximum(columns - half, 0)
            runs[half] = (prefix[:, right] - prefix[:, left]) > 0
        row = runs[half]
        if dy >= 0:
            out[:height - dy] |= row[dy:]
        else:
            out[-dy:] |= row[:height + dy]
    return out


def tolerance_pixels(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Match distance in pixels: ``tolerance`` itself when >= 1, else that fraction of the diagonal."""
    return int(tolerance) if tolerance >= 1 else int(math.ceil(tolerance * math.hypot(*shape)))


def contour_accuracy(pred: np.ndarray, truth: np.ndarray, void: Optional[np.ndarray] = None,
                     tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F = 2PR / (P + R) of the boundaries of (H, W) boolean masks; 1 when neither has a boundary."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    _check(pred, truth)
    if void is not None:
        pred, truth = pred & ~void, truth & ~void
    radius = tolerance_pixels(pred.shape, tolerance)
    pred_edge, truth_edge = boundary(pred), boundary(truth)
    n_pred, n_truth = np.count_nonzero(pred_edge), np.count_nonzero(truth_edge)
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0
    precision = np.count_nonzero(pred_edge & dilate(truth_edge, radius)) / n_pred
    recall = np.count_nonzero(truth_edge & dilate(pred_edge, radius)) / n_truth
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
