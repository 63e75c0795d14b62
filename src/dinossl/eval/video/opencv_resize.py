"""OpenCV's bilinear resize of 8-bit images (``cv2.resize`` with ``INTER_LINEAR``), number for
number, without OpenCV: the reference's video evaluation sizes its frames with it.

The rule, for each axis: destination pixel d samples the source at s = (d + 0.5) * scale - 0.5
(half-pixel centres, ``scale = 1 / (dst / src)`` in double precision, then rounded to float32),
between source pixels floor(s) and floor(s) + 1 with weights 1 - f and f (f = s - floor(s)),
no antialiasing. The weights are fixed point: round(w * 2048) as 16-bit integers. Columns
first: a source column index below 0 takes column 0 with f = 0, one at or past the last column
takes the last column with f = 0; each source row becomes 32-bit sums of pixel x weight. Then
rows: the two row indices are clipped to the image (the weights are kept), and the two row
sums combine as OpenCV's vectorised kernel does: ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16),
then (v + 2) >> 2, saturated to 0..255. A destination of exactly half the source on both axes
is OpenCV's 2 x 2 area average instead, (a + b + c + d + 2) >> 2; the same size is a copy.

Checked against OpenCV 4.14 (opencv-python-headless) on DAVIS frames at the reference's sizes
and 300 random sizes up and down: every pixel equal (tests/eval/video/test_opencv_resize.py,
which skips the comparison where OpenCV is not installed).
"""

from __future__ import annotations

import numpy as np

COEFFICIENT_BITS = 11
COEFFICIENT_SCALE = 1 << COEFFICIENT_BITS


def _taps(source: int, destination: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each destination index: the two source indices and their fixed-point weights."""
    scale = 1.0 / (destination / source)
    position = ((np.arange(destination, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = (position - first.astype(np.float32)).astype(np.float32)
    if clamp_weights:  # columns: outside the image, the border pixel alone
        below, beyond = first < 0, first >= source - 1
        fraction[below | beyond] = 0
        first[below], first[beyond] = 0, source - 1
        second = np.minimum(first + 1, source - 1)
    else:  # rows: indices clipped, weights kept
        second = np.clip(first + 1, 0, source - 1)
        first = np.clip(first, 0, source - 1)
    weight_second = np.rint(fraction * np.float32(COEFFICIENT_SCALE)).astype(np.int64)
    weight_first = np.rint((np.float32(1) - fraction) * np.float32(COEFFICIENT_SCALE)).astype(np.int64)
    return first, second, weight_first, weight_second


def opencv_linear_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 image -> (h, w[, C]) uint8 at ``size`` = (w, h), as
    ``cv2.resize(pixels, size)`` computes it (see the module)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W[, C]) uint8 image, got {pixels.dtype} of shape {pixels.shape}")
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size}")
    source_height, source_width = pixels.shape[:2]
    if (width, height) == (source_width, source_height):
        return pixels.copy()
    image = pixels.astype(np.int64)
    if source_width == 2 * width and source_height == 2 * height:
        total = image[0::2, 0::2] + image[0::2, 1::2] + image[1::2, 0::2] + image[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _taps(source_width, width, clamp_weights=True)
    y0, y1, b0, b1 = _taps(source_height, height, clamp_weights=False)
    channel = (slice(None),) + (None,) * (image.ndim - 2)  # weights broadcast over the channels
    rows = image[:, x0] * a0[channel] + image[:, x1] * a1[channel]  # (H, w[, C]) fixed-point sums
    row_weight = (slice(None),) + (None,) * (image.ndim - 1)
    mixed = (((rows[y0] >> 4) * b0[row_weight]) >> 16) + (((rows[y1] >> 4) * b1[row_weight]) >> 16)
    return np.clip((mixed + 2) >> 2, 0, 255).astype(np.uint8)
