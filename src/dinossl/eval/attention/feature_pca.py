"""Patch-feature pictures: the first principal components of a ViT's patch tokens as colours.

For one image or a set fitted jointly (a folder, or every frame of a video, so that the same
part gets the same colour everywhere):

1. every picture is resized so its short side is ``short_side`` (aspect ratio kept) and trimmed
   at the right and bottom to the patch grid; its last-block patch tokens are computed;
2. the first principal component of all patch tokens together separates the object from the
   background: patches whose projection exceeds ``threshold`` (in units of that component's
   standard deviation) are foreground. The component's sign is chosen so that the patches on
   the pictures' borders lie mostly on the background side;
3. a second PCA, of the foreground patches only, gives three components; each is scaled to
   [0, 1] between its 1st and 99th percentile over the set and drawn as red, green and blue.
   Background patches are black.

Memory: the fit holds every patch token of the set (float16: patches x D x 2 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dinossl.errors import DataError
from dinossl.eval.attention.report import check_attention_input
from dinossl.eval.frames import check_video_settings
from dinossl.eval.frames import common_size, image_files, is_video_file, list_frames, read_video, write_video
from dinossl.eval.image_input import Geometry, as_rgb, plan_geometry, read_rgb, to_input
from dinossl.inference import LoadedBackbone, require_vit
from dinossl.inference.feature_shards import write_json

DEFAULT_SHORT_SIDE = 448


@dataclass
class PatchFeatures:
    """One picture's patch tokens (h * w, D) float16 on the CPU, its (h, w) grid, the picture the
    model saw and how it was made from the original."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    picture: Image.Image
    geometry: Geometry


def patch_features(loaded: LoadedBackbone, picture: Image.Image, short_side: Optional[int] = DEFAULT_SHORT_SIDE,
                   name: str = "image") -> PatchFeatures:
    """The last-block patch tokens of an RGB picture at its own aspect ratio."""
    patch = require_vit(loaded.module)
    geometry = plan_geometry(picture.size, patch, short_side, fit="crop", name=name)
    seen = geometry.apply(picture)
    outputs = loaded.outputs(to_input(seen), patch_tokens=True)
    return PatchFeatures(outputs.patch_tokens[0].to(torch.float16).cpu(), outputs.grid, seen, geometry)


def _principal_axes(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), axes (count, D), variances (count,)) of (N, D) rows, largest first (float64)."""
    mean = rows.mean(dim=0)
    centred = rows - mean
    covariance = centred.T @ centred / max(rows.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)
    order = values.argsort(descending=True)[:count]
    return mean, vectors[:, order].T, values[order]


def _border(grid: tuple[int, int]) -> torch.Tensor:
    """(h * w,) bool: the patches on the picture's edge."""
    rows, cols = grid
    edge = torch.zeros(rows, cols, dtype=torch.bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    return edge.flatten()


@dataclass
class PcaFit:
    """A joint fit: per picture the foreground (h, w) bool and the colours (h, w, 3) in [0, 1];
    the share of the variance of all patch tokens that the first component explains."""

    foreground: list[np.ndarray]
    colours: list[np.ndarray]
    first_share: float
    threshold: float


def fit_pca(features: Sequence[PatchFeatures], threshold: float = 0.0) -> PcaFit:
    """Foreground by the first component, colours by the foreground's first three (module docstring)."""
    if not features:
        raise DataError("no pictures to fit")
    rows = torch.cat([f.tokens for f in features]).double()
    mean, axis, variance = _principal_axes(rows, 1)
    total = float(((rows - mean) ** 2).sum(dim=1).mean())
    first = ((rows - mean) @ axis[0]) / variance[0].clamp(min=1e-12).sqrt()
    border = torch.cat([_border(f.grid) for f in features])
    if float(first[border].mean()) > 0:  # the border is mostly background: make it the negative side
        first = -first
    foreground = first > threshold
    if int(foreground.sum()) < 3:
        foreground = torch.ones_like(foreground)  # nothing stands out: colour every patch
    fg_mean, axes, _ = _principal_axes(rows[foreground], 3)
    projected = (rows - fg_mean) @ axes.T  # (N, k), k <= 3
    low = torch.quantile(projected[foreground], 0.01, dim=0)
    high = torch.quantile(projected[foreground], 0.99, dim=0)
    scaled = ((projected - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
    if scaled.shape[1] < 3:
        scaled = torch.cat([scaled, scaled.new_zeros(scaled.shape[0], 3 - scaled.shape[1])], dim=1)
    scaled[~foreground] = 0
    masks, colours, start = [], [], 0
    for f in features:
        count = f.grid[0] * f.grid[1]
        masks.append(foreground[start:start + count].reshape(f.grid).numpy())
        colours.append(scaled[start:start + count].reshape(*f.grid, 3).float().numpy())
        start += count
    return PcaFit(masks, colours, float(variance[0]) / max(total, 1e-12), threshold)


def upsample_grid(values: np.ndarray, patch: int) -> np.ndarray:
    """(h, w, ...) patch values -> (h * patch, w * patch, ...): each patch a block of pixels."""
    return np.repeat(np.repeat(values, patch, axis=0), patch, axis=1)


def pca_picture(colours: np.ndarray, patch: int) -> Image.Image:
    """(h, w, 3) colours in [0, 1] -> an RGB picture of the input's size."""
    return Image.fromarray((upsample_grid(colours, patch) * 255).round().astype(np.uint8), "RGB")


@dataclass(frozen=True)
class PcaSettings:
    """``dino features``: picture size, foreground threshold and the video file."""

    short_side: Optional[int] = DEFAULT_SHORT_SIDE  # None: the image's own size
    threshold: float = 0.0  # first-component cut, in standard deviations
    video_name: str = "pca.gif"  # .gif, or .mp4 with PyAV
    fps: float = 10.0

    def __post_init__(self) -> None:
        if self.short_side is not None and self.short_side < 1:
            raise DataError(f"short_side must be positive, got {self.short_side}")
        check_video_settings(self.fps, self.video_name)


def _pictures(source: Path, video: bool) -> tuple[list, list[str], bool]:
    """(pictures or paths, names, is a video) of an image, a folder, a frame folder or a video."""
    if is_video_file(source) or (video and source.is_dir()):
        if source.is_dir():
            frames = list_frames(source)
            common_size(frames)
            return frames, [p.stem for p in frames], True
        frames = read_video(source)
        return frames, [f"{i:05d}" for i in range(len(frames))], True
    if video:
        raise DataError(f"--video needs a frame folder or a video file, got {source}")
    if source.is_file():
        return [source], [source.stem], False
    paths = image_files(source)
    stems = [p.stem for p in paths]
    clash = next((stem for stem in stems if stems.count(stem) > 1), None)
    if clash is not None:
        raise DataError(f"{source}: several images are named {clash!r} (each image's files are named by its stem)")
    return paths, stems, False


def run_feature_pictures(loaded: LoadedBackbone, source: str | Path, output: Path,
                         settings: PcaSettings = PcaSettings(), video: bool = False,
                         progress: bool = True) -> list[Path]:
    """Fit one PCA over every picture of ``source`` and write, per picture, ``<name>.png`` (the
    colours) and ``<name>-foreground.png`` (the first-component mask), for a video the frames
    under ``frames/`` and the video, and ``pca.json``. Returns the files written."""
    patch = require_vit(loaded.module)
    source = check_attention_input(source, video)
    items, names, is_video = _pictures(source, video)
    features = []
    for item, name in tqdm(list(zip(items, names)), desc="patch features", unit="image", disable=not progress):
        picture = read_rgb(item) if isinstance(item, Path) else as_rgb(item, name)
        features.append(patch_features(loaded, picture, settings.short_side, name=str(item)))
    fit = fit_pca(features, settings.threshold)
    folder = output / "frames" if is_video else output
    folder.mkdir(parents=True, exist_ok=True)
    written, pictures = [], []
    for name, colours, mask in zip(names, fit.colours, fit.foreground):
        picture = pca_picture(colours, patch)
        picture.save(folder / f"{name}.png")
        Image.fromarray(upsample_grid(mask, patch).astype(np.uint8) * 255, "L").save(folder / f"{name}-foreground.png")
        written += [folder / f"{name}.png", folder / f"{name}-foreground.png"]
        pictures.append(picture)
    if is_video:
        written.append(write_video(pictures, output / settings.video_name, fps=settings.fps))
    summary = {
        "pictures": len(names), "patch_size": patch, "short_side": settings.short_side,
        "threshold_std": settings.threshold, "first_component_variance_share": fit.first_share,
        "foreground_share": {name: float(mask.mean()) for name, mask in zip(names, fit.foreground)},
        "sizes": {name: list(f.picture.size) for name, f in zip(names, features)},
    }
    write_json(output / "pca.json", summary)
    return written + [output / "pca.json"]
