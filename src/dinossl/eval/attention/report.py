"""Attention maps and mass masks of images, image folders and videos, written as files.

For each image: ``input.png`` (the picture the model saw), ``attn-head<i>.png`` and
``attn-mean.png`` (heat-map overlays), ``mask-head<i>.png`` and ``mask-mean.png`` (mass-mask
overlays), ``attention.npy`` (heads, h, w) raw maps and ``attention.json`` (settings and the
share of patches each mask keeps). For a video or frame folder: one overlay per frame under
``frames/`` and an attention video (GIF or MP4).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from dinossl.errors import DataError
from dinossl.eval.attention.maps import DEFAULT_FRACTION, check_fraction, cls_attention, mass_mask, upsample
from dinossl.eval.frames import check_video_settings
from dinossl.eval.frames import common_size, image_files, is_video_file, list_frames, read_video, write_video
from dinossl.eval.image_input import as_rgb, open_image, plan_geometry, to_input
from dinossl.inference import require_vit
from dinossl.eval.attention.overlay import heatmap_overlay, mask_overlay

log = logging.getLogger("dinossl")


@dataclass
class ImageAttention:
    """One picture's attention: ``maps`` (heads, h, w) and ``masks`` (heads + 1, h, w), the last
    mask being that of the mean map; ``picture`` is the resized, cropped RGB input."""

    picture: Image.Image
    maps: torch.Tensor
    masks: torch.Tensor
    patch_size: int
    fraction: float

    @property
    def mean_map(self) -> torch.Tensor:
        return self.maps.mean(dim=0)


@torch.no_grad()
def attend(backbone: nn.Module, image: Image.Image, short_side: Optional[int] = 480,
           fraction: float = DEFAULT_FRACTION, device: str | torch.device = "cpu",
           name: str = "image") -> ImageAttention:
    """Per-head [CLS] attention and mass masks of one picture (any colour mode, see image_input)."""
    patch = require_vit(backbone)
    picture = as_rgb(image, name)
    geometry = plan_geometry(picture.size, patch, short_side, fit="crop", name=name)
    picture = geometry.apply(picture)
    maps = cls_attention(backbone, to_input(picture).to(device))[0].cpu()
    masks = mass_mask(torch.cat([maps, maps.mean(dim=0, keepdim=True)]), fraction)
    return ImageAttention(picture, maps, masks, patch, fraction)


def save_image_attention(result: ImageAttention, folder: Path) -> list[Path]:
    """Write one picture's overlays, raw maps and summary into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    heads = result.maps.shape[0]
    names = [f"head{i}" for i in range(heads)] + ["mean"]
    heat = upsample(torch.cat([result.maps, result.mean_map[None]]), result.patch_size)
    masks = upsample(result.masks, result.patch_size)
    written = [folder / "input.png"]
    result.picture.save(written[0])
    for index, name in enumerate(names):
        heatmap_overlay(result.picture, heat[index]).save(folder / f"attn-{name}.png")
        mask_overlay(result.picture, masks[index]).save(folder / f"mask-{name}.png")
        written += [folder / f"attn-{name}.png", folder / f"mask-{name}.png"]
    np.save(folder / "attention.npy", result.maps.numpy().astype(np.float32))
    summary = {
        "input_size": list(result.picture.size),
        "patch_size": result.patch_size,
        "grid": list(result.maps.shape[1:]),
        "heads": heads,
        "mass_fraction": result.fraction,
        "kept_patch_share": {name: float(result.masks[i].float().mean()) for i, name in enumerate(names)},
    }
    (folder / "attention.json").write_text(json.dumps(summary, indent=2) + "\n")
    return written + [folder / "attention.npy", folder / "attention.json"]


def video_frame(result: ImageAttention, head: Optional[int] = None) -> Image.Image:
    """Heat-map overlay of one head (None: the mean over heads) for an attention video."""
    if head is not None and not 0 <= head < result.maps.shape[0]:
        raise DataError(f"head {head} does not exist: the model has {result.maps.shape[0]} heads")
    chosen = result.mean_map if head is None else result.maps[head]
    return heatmap_overlay(result.picture, upsample(chosen, result.patch_size))


def attention_video(backbone: nn.Module, frames: Sequence[Image.Image | Path], output: Path,
                    video_name: str = "attention.gif", fps: float = 10.0, head: Optional[int] = None,
                    short_side: Optional[int] = 480, fraction: float = DEFAULT_FRACTION,
                    device: str | torch.device = "cpu", progress: bool = True,
                    frame_names: Optional[Sequence[str]] = None) -> Path:
    """Overlay every frame (written to ``output/frames``) and assemble the attention video.
    Frames given as paths are read one at a time."""
    if not frames:
        raise DataError("no frames")
    frame_names = list(frame_names or [f"{i:05d}" for i in range(len(frames))])
    pictures = []
    for name, frame in tqdm(list(zip(frame_names, frames)), desc="attention video", unit="frame",
                            disable=not progress):
        if isinstance(frame, Path):
            frame = open_image(frame)
        result = attend(backbone, frame, short_side, fraction, device, name=name)
        picture = video_frame(result, head)
        (output / "frames").mkdir(parents=True, exist_ok=True)
        picture.save(output / "frames" / f"{name}.png")
        pictures.append(picture)
    return write_video(pictures, output / video_name, fps=fps)


@dataclass(frozen=True)
class AttentionSettings:
    """What ``dino attention`` draws: image size, mass fraction of the masks, and the video."""

    short_side: Optional[int] = 480  # None: the image's own size
    fraction: float = DEFAULT_FRACTION
    video_name: str = "attention.gif"  # .gif, or .mp4 with PyAV
    fps: float = 10.0
    head: Optional[int] = None  # head shown in a video; None: the mean of all heads

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.short_side is not None and self.short_side < 1:
            raise DataError(f"short_side must be positive, got {self.short_side}")
        check_video_settings(self.fps, self.video_name)


def check_attention_input(source: str | Path, video: bool = False) -> Path:
    """``source`` if ``dino attention`` can read it: an image file, an image folder, a video file,
    or with ``video`` a frame folder (checked before any weights are loaded)."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"input {source} does not exist")
    if video and not (source.is_dir() or is_video_file(source)):
        raise DataError(f"--video needs a frame folder or a video file, got {source}")
    return source


def run_attention(backbone: nn.Module, source: str | Path, output: Path, *, video: bool = False,
                  short_side: Optional[int] = 480, fraction: float = DEFAULT_FRACTION,
                  video_name: str = "attention.gif", fps: float = 10.0, head: Optional[int] = None,
                  device: str | torch.device = "cpu", progress: bool = True) -> list[Path]:
    """Dispatch on ``source``: an image file (files directly in ``output``), a folder of images
    (one subfolder per image), a video file, or a numbered frame folder when ``video`` (an
    attention video). Returns the main files written."""
    require_vit(backbone)
    check_fraction(fraction)
    source = check_attention_input(source, video)
    common = dict(short_side=short_side, fraction=fraction, device=device)
    if is_video_file(source) or (video and source.is_dir()):
        if source.is_dir():
            frames = list_frames(source)
            common_size(frames)
            names = [path.stem for path in frames]
        else:
            frames = read_video(source)
            names = None
            if len({frame.size for frame in frames}) > 1:
                raise DataError(f"{source}: frames differ in size")
        return [attention_video(backbone, frames, output, video_name, fps, head, progress=progress,
                                frame_names=names, **common)]
    if video:
        raise DataError(f"--video needs a frame folder or a video file, got {source}")
    if source.is_file():
        return save_image_attention(attend(backbone, open_image(source), name=str(source), **common), output)
    paths = image_files(source)
    stems = [path.stem for path in paths]
    clash = next((stem for stem in stems if stems.count(stem) > 1), None)
    if clash is not None:
        raise DataError(f"{source}: several images are named {clash!r} (each image gets a folder of its stem)")
    written = []
    for path in tqdm(paths, desc="attention", unit="image", disable=not progress):
        result = attend(backbone, open_image(path), name=str(path), **common)
        written += save_image_attention(result, output / path.stem)
    return written
