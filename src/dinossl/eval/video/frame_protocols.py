"""How frames and labels enter and leave the label propagation: the package's protocol and the
reference script's (``eval_video_segmentation.py``). Both feed the same features and the same
propagation core; they differ in the input size and filter, the normalisation, how the first
frame's annotation becomes patch labels and how soft labels become a mask.

``dinossl`` (default):
* frames scaled so the short side is ``short_side`` and each side rounded to the nearest
  multiple of the patch size (aspect kept within half a patch), PIL bicubic, ImageNet
  mean/std;
* first-frame labels: the share of each patch covered by each object (area average);
* masks: soft labels bilinearly upsampled straight to the frame size, each channel min-max
  scaled, arg-max.

``reference``:
* the short side becomes ``short_side``, the long side ``short_side x aspect`` floored to a
  multiple of 64 (854 x 480 -> 832 x 480), resized with OpenCV's bilinear filter
  (:mod:`.opencv_resize`), normalised with mean (0.485, 0.456, 0.406) and std
  (0.228, 0.224, 0.225) (the script's std for red is 0.228, not ImageNet's 0.229); the
  right/bottom remainder below one patch is dropped;
* first-frame labels: the annotation resized to the patch grid by PIL's nearest neighbour,
  one-hot;
* masks: soft labels upsampled bilinearly by the patch size (to the grid's pixel size), each
  channel min-max scaled, arg-max, then the label image resized to the frame size by PIL's
  nearest neighbour.
The script sizes a square frame's labels and features differently (and then fails); here
both follow the frame rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from dinossl.errors import DataError
from dinossl.eval.image_input import Geometry, plan_geometry, to_input
from dinossl.eval.video.opencv_resize import opencv_linear_resize

REFERENCE_MEAN = (0.485, 0.456, 0.406)
REFERENCE_STD = (0.228, 0.224, 0.225)
REFERENCE_MULTIPLE = 64


def one_hot_grid(labels: np.ndarray, ids: Sequence[int], grid: tuple[int, int],
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W) object ids -> (C, h, w) share of each patch covered by each id (C = len(ids)) on
    ``device``; pixels with an id outside ``ids`` (void) count as background (ids[0])."""
    index = torch.from_numpy(_channels(labels, ids)).to(device).long()
    one_hot = F.one_hot(index, len(ids)).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(one_hot[None], grid)[0]


def _channels(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """(H, W) object ids -> (H, W) uint8 channel of each pixel (its position in ``ids``; 0 for
    ids not listed)."""
    channels = np.zeros(labels.shape, dtype=np.uint8)  # at most 256 ids (a uint8 palette)
    for channel, obj in enumerate(ids[1:], start=1):
        channels[labels == obj] = channel
    return channels


def _min_max_channels(up: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> each channel whose maximum is positive scaled to [0, 1] by its min and max."""
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(high > 0, (up - low) / (high - low).clamp_min(1e-12), up)


def labels_from_soft(soft: torch.Tensor, size: tuple[int, int], ids: Sequence[int]) -> np.ndarray:
    """(C, h, w) soft labels on any device -> (H, W) uint8 object ids at ``size`` = (H, W):
    bilinear upsampling, per-channel min-max scaling and arg-max on that device; only the
    arg-max (one byte per pixel) is copied to the host."""
    up = F.interpolate(soft[None], size=size, mode="bilinear", align_corners=False)[0]
    channel = _min_max_channels(up).max(dim=0).indices.to(torch.uint8)  # C <= 255: ids from a uint8 palette
    return np.asarray(ids, dtype=np.uint8)[channel.cpu().numpy()]


@dataclass(frozen=True)
class PackageFrames:
    """The ``dinossl`` protocol for frames of one size (see the module)."""

    geometry: Geometry
    patch: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.geometry.grid(self.patch)

    def model_input(self, picture: Image.Image) -> torch.Tensor:
        """RGB frame -> (1, 3, H', W') normalised input."""
        return to_input(self.geometry.apply(picture))

    def first_labels(self, labels: np.ndarray, ids: Sequence[int], device: torch.device) -> torch.Tensor:
        return one_hot_grid(labels, ids, self.grid, device)

    def mask(self, soft: torch.Tensor, ids: Sequence[int]) -> np.ndarray:
        width, height = self.geometry.source
        return labels_from_soft(soft, (height, width), ids)


def reference_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) the reference script gives a (width, height) frame: the short side
    ``short_side``, the other ``short_side`` x aspect floored to a multiple of 64."""
    width, height = size
    if height > width:
        resized = (short_side, int((short_side * height / width) // REFERENCE_MULTIPLE * REFERENCE_MULTIPLE))
    else:
        resized = (int((short_side * width / height) // REFERENCE_MULTIPLE * REFERENCE_MULTIPLE), short_side)
    if min(resized) < 1:
        raise DataError(f"a {width}x{height} frame at short side {short_side} has a side under 64 px "
                        "under the reference protocol")
    return resized


@dataclass(frozen=True)
class ReferenceFrames:
    """The ``reference`` protocol for frames of one size (see the module)."""

    source: tuple[int, int]  # (width, height) of the frames
    resized: tuple[int, int]
    patch: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.resized[1] // self.patch, self.resized[0] // self.patch

    def model_input(self, picture: Image.Image) -> torch.Tensor:
        """RGB frame -> (1, 3, h p, w p) input: OpenCV bilinear resize, /255, the script's mean/std."""
        if picture.size != self.source:
            raise DataError(f"size {picture.size[0]}x{picture.size[1]} differs from {self.source[0]}x{self.source[1]}")
        resized = opencv_linear_resize(np.asarray(picture.convert("RGB")), self.resized)
        pixels = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
        pixels = (pixels - torch.tensor(REFERENCE_MEAN).view(3, 1, 1)) / torch.tensor(REFERENCE_STD).view(3, 1, 1)
        rows, cols = self.grid
        return pixels[None, :, : rows * self.patch, : cols * self.patch].contiguous()

    def first_labels(self, labels: np.ndarray, ids: Sequence[int], device: torch.device) -> torch.Tensor:
        """(C, h, w) one-hot of the annotation resized to the grid by nearest neighbour."""
        rows, cols = self.grid
        small = np.asarray(Image.fromarray(_channels(labels, ids)).resize((cols, rows), Image.Resampling.NEAREST))
        index = torch.from_numpy(small.copy()).to(device).long()
        return F.one_hot(index, len(ids)).permute(2, 0, 1).float()

    def mask(self, soft: torch.Tensor, ids: Sequence[int]) -> np.ndarray:
        rows, cols = self.grid
        up = F.interpolate(soft[None], scale_factor=self.patch, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]  # (C, rows * patch, cols * patch)
        channel = _min_max_channels(up).max(dim=0).indices.to(torch.uint8).cpu().numpy()
        full = np.asarray(Image.fromarray(channel).resize(self.source, Image.Resampling.NEAREST))
        return np.asarray(ids, dtype=np.uint8)[full]


FrameProtocol = PackageFrames | ReferenceFrames


def frame_protocol(protocol: str, size: tuple[int, int], patch: int, short_side: int,
                   name: str = "frame") -> FrameProtocol:
    """The frame protocol ``"dinossl"`` or ``"reference"`` for frames of ``size`` = (width, height)."""
    if protocol == "reference":
        frames = ReferenceFrames(size, reference_size(size, short_side), patch)
        if min(frames.grid) < 1:
            raise DataError(f"{name}: resized to {frames.resized[0]}x{frames.resized[1]} under the reference "
                            f"protocol, smaller than one {patch}x{patch} patch")
        return frames
    if protocol == "dinossl":
        return PackageFrames(plan_geometry(size, patch, short_side, fit="resize", name=name), patch)
    raise ValueError(f"protocol must be 'dinossl' or 'reference', got {protocol!r}")
