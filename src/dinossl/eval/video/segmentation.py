"""Semi-supervised video object segmentation by label propagation (DINO's DAVIS protocol).

Frames are resized so the short side is 480 px and each side a multiple of the patch size
(a stretch of under one patch, so no border is dropped). The last block's patch tokens,
L2-normalised, are the features. The first frame's ground truth, area-averaged onto the patch
grid, gives soft one-hot labels; each later frame takes its labels from the first frame and
the ``context`` previous frames (their predicted soft labels) through
:func:`~dinossl.eval.video.propagation.propagate_labels`. The soft labels are upsampled
bilinearly to the frame size, each object's channel is min-max scaled (as in the reference
evaluation), and the arg-max is the predicted object id.

Features, soft labels, propagation, upsampling and arg-max stay on the evaluation device; only
each frame's (H, W) object ids come back to the host (as in the reference, which propagates on
the GPU).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from dinossl.errors import ConfigError, DataError
from dinossl.eval.video.davis import DavisLayout, object_ids, read_annotation, score_sequence, summarise, write_annotation
from dinossl.eval.frames import common_size, list_frames
from dinossl.eval.image_input import as_rgb, open_image, plan_geometry, to_input
from dinossl.eval.video.propagation import DEFAULT_RADIUS, DEFAULT_TEMPERATURE, DEFAULT_TOPK, propagate_labels
from dinossl.eval.results import RESULTS_NAME, write_results
from dinossl.inference import describe_backbone, patch_grid, patch_tokens, require_vit

log = logging.getLogger("dinossl")


@dataclass(frozen=True)
class PropagationSettings:
    """The protocol's knobs; defaults are the paper's (Table 5)."""

    short_side: int = 480
    radius: Optional[int] = DEFAULT_RADIUS
    topk: int = DEFAULT_TOPK
    context: int = 7
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        problems = [f"{name} {value}" for name, value, ok in (
            ("short side", self.short_side, self.short_side >= 1),
            ("radius", self.radius, self.radius is None or self.radius >= 0),
            ("top-k", self.topk, self.topk >= 1),
            ("context", self.context, self.context >= 0),
            ("temperature", self.temperature, self.temperature > 0),
        ) if not ok]
        if problems:
            raise ConfigError("invalid propagation settings: " + ", ".join(problems))


@torch.no_grad()
def patch_features(backbone: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) normalised frame -> (d, H/p, W/p) L2-normalised last-block patch tokens."""
    rows, cols = patch_grid(backbone, frame)
    tokens = patch_tokens(backbone, frame)[0]
    return F.normalize(tokens.float(), dim=-1).T.reshape(-1, rows, cols)


def one_hot_grid(labels: np.ndarray, ids: Sequence[int], grid: tuple[int, int],
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W) object ids -> (C, h, w) share of each patch covered by each id (C = len(ids)) on
    ``device``; pixels with an id outside ``ids`` (void) count as background (ids[0])."""
    channels = np.zeros(labels.shape, dtype=np.uint8)  # at most 256 ids (a uint8 palette)
    for channel, obj in enumerate(ids[1:], start=1):
        channels[labels == obj] = channel
    index = torch.from_numpy(channels).to(device).long()
    one_hot = F.one_hot(index, len(ids)).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(one_hot[None], grid)[0]


def labels_from_soft(soft: torch.Tensor, size: tuple[int, int], ids: Sequence[int]) -> np.ndarray:
    """(C, h, w) soft labels on any device -> (H, W) uint8 object ids at ``size`` = (H, W):
    bilinear upsampling, per-channel min-max scaling and arg-max on that device; only the
    arg-max (one byte per pixel) is copied to the host."""
    up = F.interpolate(soft[None], size=size, mode="bilinear", align_corners=False)[0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    scaled = torch.where(high > 0, (up - low) / (high - low).clamp_min(1e-12), up)
    channel = scaled.max(dim=0).indices.to(torch.uint8)  # C <= 255 objects: ids come from a uint8 palette
    return np.asarray(ids, dtype=np.uint8)[channel.cpu().numpy()]


def segment_frames(backbone: nn.Module, frames: Sequence[Path], first_labels: np.ndarray,
                   settings: PropagationSettings = PropagationSettings(), device: str | torch.device = "cpu",
                   progress: bool = False) -> Iterator[np.ndarray]:
    """Yield (H, W) uint8 object ids for every frame, the first being ``first_labels`` itself.

    ``frames`` are image files of one size, ``first_labels`` the first frame's (H, W) ids.
    """
    patch = require_vit(backbone)
    if not frames:
        raise DataError("no frames")
    first = as_rgb(open_image(frames[0]), str(frames[0]))
    width, height = first.size
    if first_labels.shape != (height, width):
        raise DataError(f"the first annotation is {first_labels.shape[1]}x{first_labels.shape[0]}, "
                        f"its frame {frames[0].name} is {width}x{height}")
    geometry = plan_geometry(first.size, patch, settings.short_side, fit="resize", name=str(frames[0]))
    ids = [0] + object_ids(first_labels)
    if len(ids) == 1:
        log.warning("%s: the first annotation holds no object", frames[0])

    def features(picture) -> torch.Tensor:  # stays on the device
        return patch_features(backbone, to_input(geometry.apply(picture)).to(device))

    first_features = features(first)
    first_soft = one_hot_grid(first_labels, ids, geometry.grid(patch), first_features.device)
    recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=settings.context)
    yield first_labels.astype(np.uint8)
    for path in tqdm(frames[1:], desc=frames[0].parent.name, unit="frame", disable=not progress):
        picture = as_rgb(open_image(path), str(path))
        if picture.size != first.size:
            raise DataError(f"frames differ in size: {frames[0].name} is {width}x{height}, "
                            f"{path.name} is {picture.size[0]}x{picture.size[1]}")
        target = features(picture)
        sources = torch.stack([first_features] + [f for f, _ in recent])
        labels = torch.stack([first_soft] + [s for _, s in recent])
        soft = propagate_labels(target, sources, labels, settings.radius, settings.topk, settings.temperature)
        if settings.context:
            recent.append((target, soft))
        yield labels_from_soft(soft, (height, width), ids)


def _annotations(folder: Path, frames: Sequence[Path]) -> list[Optional[Path]]:
    found = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png"} if folder.is_dir() else {}
    return [found.get(frame.stem) for frame in frames]


def evaluate_davis(backbone: nn.Module, root: str | Path, output: Path, sequences: Optional[Sequence[str]] = None,
                   resolution: str = "480p", settings: PropagationSettings = PropagationSettings(),
                   device: str | torch.device = "cpu", progress: bool = True, max_frames: Optional[int] = None,
                   weights: Optional[dict] = None) -> dict:
    """Segment each sequence from its first annotation, write ``output/<seq>/NNNNN.png`` palette
    masks, score them (J, F, J&F per object, per sequence, overall) and write
    ``output/results.json`` (``weights``: the results file's weights record; default: the
    architecture only). ``max_frames`` keeps only each sequence's first frames (quick checks)."""
    layout = DavisLayout(Path(root), resolution)
    names = layout.sequences(sequences)
    per_sequence = {}
    for name in names:
        frames = list_frames(layout.frames_dir(name))[:max_frames]
        common_size(frames)
        notes = _annotations(layout.annotations_dir(name), frames)
        if notes[0] is None:
            raise DataError(f"sequence {name}: no annotation for the first frame {frames[0].name}")
        first = read_annotation(notes[0])
        truths = [read_annotation(p) if p is not None else None for p in notes]
        for path, truth in zip(notes, truths):
            if truth is not None and truth.shape != first.shape:
                raise DataError(f"sequence {name}: annotation {path.name} is {truth.shape[1]}x{truth.shape[0]}, "
                                f"the first is {first.shape[1]}x{first.shape[0]}")
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        predictions = []
        for index, labels in enumerate(segment_frames(backbone, frames, first, settings, device, progress)):
            write_annotation(folder / f"{frames[index].stem}.png", labels)
            predictions.append(labels)
        missing = sum(t is None for t in truths[1:-1])
        if missing:
            log.warning("sequence %s: %d frames have no annotation and are not scored", name, missing)
        objects = sorted(set().union(*(object_ids(t) for t in truths if t is not None)))
        per_sequence[name] = score_sequence(predictions, truths, objects)
    report = summarise(per_sequence)
    report["settings"] = {**asdict(settings), "resolution": resolution, "max_frames": max_frames,
                          "scored_frames": "all annotated frames but the first and the last"}
    report["weights"] = weights if weights is not None else {"backbone": describe_backbone(backbone)}
    write_results(output / RESULTS_NAME, report, overwrite=True)  # the folder was checked before any work
    return report
