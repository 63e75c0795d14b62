"""Semi-supervised video object segmentation by label propagation (DINO's DAVIS protocol).

The last block's patch tokens of each frame, L2-normalised, are the features. The first
frame's ground truth becomes soft labels on the patch grid; each later frame takes its labels
from the first frame and the ``context`` previous frames (their predicted soft labels) through
:func:`~dinossl.eval.video.propagation.propagate_labels`; the soft labels become the frame's
mask. How frames are sized and normalised, how the first annotation reaches the grid and how
soft labels become a mask is the ``protocol`` (:mod:`.frame_protocols`): ``dinossl`` (the
default: short side 480 px, each side a multiple of the patch size, ImageNet normalisation,
area-averaged first labels, upsampling straight to the frame size) or ``reference`` (the
reference script's, mask for mask).

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
from dinossl.eval.image_input import as_rgb, open_image
from dinossl.eval.validation import PROTOCOLS
from dinossl.eval.video.frame_protocols import frame_protocol, labels_from_soft, one_hot_grid  # noqa: F401
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
    protocol: str = "dinossl"  # frames and labels in and out: "dinossl" or "reference" (frame_protocols)

    def __post_init__(self) -> None:
        problems = [f"{name} {value}" for name, value, ok in (
            ("short side", self.short_side, self.short_side >= 1),
            ("radius", self.radius, self.radius is None or self.radius >= 0),
            ("top-k", self.topk, self.topk >= 1),
            ("context", self.context, self.context >= 0),
            ("temperature", self.temperature, self.temperature > 0),
            ("protocol", self.protocol, self.protocol in PROTOCOLS),
        ) if not ok]
        if problems:
            raise ConfigError("invalid propagation settings: " + ", ".join(problems))


@torch.no_grad()
def patch_features(backbone: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) normalised frame -> (d, H/p, W/p) L2-normalised last-block patch tokens."""
    rows, cols = patch_grid(backbone, frame)
    tokens = patch_tokens(backbone, frame)[0]
    return F.normalize(tokens.float(), dim=-1).T.reshape(-1, rows, cols)


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
    protocol = frame_protocol(settings.protocol, first.size, patch, settings.short_side, name=str(frames[0]))
    ids = [0] + object_ids(first_labels)
    if len(ids) == 1:
        log.warning("%s: the first annotation holds no object", frames[0])

    def features(picture) -> torch.Tensor:  # stays on the device
        return patch_features(backbone, protocol.model_input(picture).to(device))

    first_features = features(first)
    first_soft = protocol.first_labels(first_labels, ids, first_features.device)
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
        yield protocol.mask(soft, ids)


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
