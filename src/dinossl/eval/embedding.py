"""``dino embed``: the features of every image of a folder or list, taken home.

Each image (read by the package's one colour rule) becomes a model input as in the
evaluations: bicubic resize of the short side to ``resize``, center crop ``crop`` (the paper's
256 / 224), or with ``keep_aspect`` the short side resized to ``crop`` and the right/bottom
trimmed to the patch grid (the image's own aspect ratio), or with ``square`` resized to
``crop`` x ``crop`` (bicubic, the geometry of copy detection and ``dino dedupe``). Its global
descriptor is

* ``cls``: the backbone's output (ViT [CLS] after the final norm; ResNet: pooled features);
* ``gem``: GeM pooling (exponent ``gem_p``) of the last block's patch tokens;
* ``avg``: the mean of those patch tokens; ``cls+avg``: [CLS] then the mean (2 x D values);

L2-normalised unless ``normalize`` is off. ``multiscale`` averages the descriptor over the
scales 1, 1/sqrt 2 and 1/2 with the package's retrieval recipe
(:func:`dinossl.eval.retrieval.descriptors.describe_batch`; the reference's ``multi_scale``)
before normalising (``cls`` and ``gem``). ``patch_tokens`` adds the last block's patch tokens:
``"full"`` (each image's whole grid) or a number G (average-pooled to a G x G grid).

Rows go into a feature folder (:mod:`dinossl.inference.feature_shards`) shard by shard, so
nothing but one shard is held in memory; an interrupted run resumes at the first unfinished
shard; under torchrun process r writes shards r, r + W, ... and rank 0 writes the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dinossl.data.augment import evaluation_transform
from dinossl.data.images import IMAGE_EXTENSIONS, UnreadableImage, read_image_file
from dinossl.errors import DataError, DinoError
from dinossl.eval.image_input import plan_geometry, to_input
from dinossl.eval.retrieval.descriptors import MULTISCALE, DescriptorSpec, describe_batch
from dinossl.inference import BackboneHarness, LoadedBackbone, describe_backbone
from dinossl.inference.feature_shards import DTYPES, MANIFEST, SHARD_FORMATS, ShardRows, ShardWriter, write_json
from dinossl.inference.outputs import forward_outputs
from dinossl.outputs import usable_output_folder
from dinossl.runtime.cores import cap_workers
from dinossl.runtime.distributed import DistContext, barrier, init_distributed, shutdown_distributed
from dinossl.runtime.folder_lock import folder_lock

log = logging.getLogger("dinossl")

POOLS = ("cls", "gem", "avg", "cls+avg")
RUN_RECORD = "embed-run.json"  # what the folder is being filled with (resuming needs the same)


@dataclass(frozen=True)
class EmbedSettings:
    """What ``dino embed`` computes and how it stores it (see the module docstring)."""

    pool: str = "cls"
    normalize: bool = True
    patch_tokens: str = "none"  # none, full, or a grid side G (pooled to G x G)
    multiscale: bool = False
    resize: int = 256
    crop: int = 224
    keep_aspect: bool = False
    square: bool = False  # resize to crop x crop (bicubic, no crop): the copy-detection and dedupe geometry
    gem_p: float = 4.0
    dtype: str = "float32"  # float32 or float16
    format: str = "safetensors"  # safetensors or npy
    images_per_shard: int = 1000

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise DinoError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.patch_tokens not in ("none", "full") and not (self.patch_tokens.isdigit() and int(self.patch_tokens) > 0):
            raise DinoError(f"patch_tokens must be none, full or a grid side (a positive number), got {self.patch_tokens!r}")
        if self.multiscale and self.pool not in ("cls", "gem"):
            raise DinoError(f"--multiscale averages the cls or gem descriptor over scales; pool is {self.pool}")
        if self.dtype not in DTYPES or self.format not in SHARD_FORMATS:
            raise DinoError(f"dtype must be one of {', '.join(DTYPES)} and format one of {', '.join(SHARD_FORMATS)}")
        if min(self.resize, self.crop, self.images_per_shard) < 1 or self.gem_p <= 0:
            raise DinoError("resize, crop, images_per_shard and gem_p must be positive")
        if self.keep_aspect and self.square:
            raise DinoError("choose --keep-aspect or --square, not both")
        if self.resize < self.crop and not (self.keep_aspect or self.square):
            raise DinoError(f"resize ({self.resize}) must be at least crop ({self.crop})")

    @property
    def needs_tokens(self) -> bool:
        return self.pool in ("avg", "cls+avg") or self.patch_tokens != "none"

    def check(self, backbone: nn.Module) -> None:
        """DinoError when the backbone cannot give these features."""
        patch = getattr(backbone, "patch_size", None)
        if not isinstance(patch, int) and (self.pool != "cls" or self.patch_tokens != "none"):
            raise DinoError(f"a {type(backbone).__name__} backbone has no patch tokens: use --pool cls "
                            "without --patch-tokens")
        if isinstance(patch, int) and not self.keep_aspect and self.crop % patch:
            raise DinoError(f"crop {self.crop} is not a multiple of the backbone's patch size {patch}")


def list_inputs(data: str | Path) -> tuple[list[Path], list[str], Optional[Path]]:
    """The images to embed: every image file under a folder (recursively, sorted) or the lines
    of a text file of paths (relative ones taken from the file's folder). Returns the files,
    their names in the index (relative to the folder; as listed) and the folder (None for a list)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"data {data} does not exist")
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(data).parts))
        if not files:
            raise DataError(f"no images in {data} (looked for {', '.join(IMAGE_EXTENSIONS)} files in its tree)")
        return files, [p.relative_to(data).as_posix() for p in files], data
    lines = [line.strip() for line in data.read_text(errors="replace").splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    if not names:
        raise DataError(f"list {data} names no images")
    files = [Path(n) if Path(n).is_absolute() else data.parent / n for n in names]
    return files, names, None


class _Inputs(Dataset):
    """(index, input (3, H, W) or None, reason or None, (width, height)) per file."""

    def __init__(self, files: Sequence[Path], indices: Sequence[int], prepare: Callable) -> None:
        self.files, self.indices, self.prepare = files, list(indices), prepare

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        try:
            picture = read_image_file(self.files[index])
            return index, self.prepare(picture), None, picture.size
        except (UnreadableImage, DataError) as exc:
            return index, None, str(exc), (0, 0)


def input_transform(settings: EmbedSettings, patch: Optional[int]) -> Callable:
    """RGB picture -> (3, H, W) normalised input (see the module docstring)."""
    if settings.square:
        return lambda picture: to_input(picture.resize((settings.crop, settings.crop), Image.Resampling.BICUBIC))[0]
    if not settings.keep_aspect:
        return evaluation_transform(settings.resize, settings.crop)

    def keep_aspect(picture):
        geometry = plan_geometry(picture.size, patch or 1, settings.crop, fit="crop")
        return to_input(geometry.apply(picture))[0]

    return keep_aspect


def _pooled_grid(tokens: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """(B, h*w, D) -> (B, side*side, D) average-pooled patch tokens (adaptive pooling)."""
    batch, _, dim = tokens.shape
    maps = tokens.reshape(batch, *grid, dim).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(maps, side).flatten(2).transpose(1, 2)


def compute_rows(settings: EmbedSettings) -> Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]:
    """(module, images (B, 3, H, W)) -> {"descriptors": (B, D)[, "patch_tokens", "patch_grids"]}."""
    scales = MULTISCALE if settings.multiscale else (1.0,)

    def compute(module: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        one_pass = settings.needs_tokens or (settings.pool == "cls" and not settings.multiscale)
        outputs = forward_outputs(module, images, with_patch_tokens=settings.needs_tokens) if one_pass else None
        if settings.pool == "cls":
            descriptor = (describe_batch(module, images, DescriptorSpec("cls", scales)) if settings.multiscale
                          else outputs.cls)
        elif settings.pool == "gem":
            both = describe_batch(module, images, DescriptorSpec("cls+gem", scales, gem_p=settings.gem_p))
            descriptor = both[:, both.shape[1] // 2:]
        else:
            mean = outputs.patch_tokens.mean(dim=1)
            descriptor = mean if settings.pool == "avg" else torch.cat([outputs.cls, mean], dim=1)
        descriptor = descriptor.float()
        rows = {"descriptors": F.normalize(descriptor, dim=1) if settings.normalize else descriptor}
        if settings.patch_tokens == "full":
            rows["patch_tokens"] = outputs.patch_tokens.flatten(0, 1)
            rows["patch_grids"] = torch.tensor([outputs.grid] * images.shape[0], dtype=torch.long)
        elif settings.patch_tokens != "none":
            rows["patch_tokens"] = _pooled_grid(outputs.patch_tokens, outputs.grid, int(settings.patch_tokens))
        return rows

    return compute


def embed_span(loaded: LoadedBackbone, files: Sequence[Path], names: Sequence[str], span: Sequence[int],
               settings: EmbedSettings, batch_size: int, num_workers: int = 0,
               bar: Optional[tqdm] = None) -> ShardRows:
    """The rows of the images ``span`` (indices into ``files``), in order; consecutive inputs of
    one size are batched (up to ``batch_size``); unreadable images are listed with the reason."""
    compute = compute_rows(settings)
    dataset = _Inputs(files, span, input_transform(settings, loaded.patch_size))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=cap_workers(num_workers))
    parts: dict[str, list[torch.Tensor]] = {}
    paths: list[str] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[dict[str, str]] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            for key, value in loaded.apply(compute, torch.stack(pending)).items():
                parts.setdefault(key, []).append(value.cpu())
            pending.clear()

    for index, pixels, reason, size in loader:
        if pixels is None:
            skipped.append({"path": names[index], "reason": reason})
        else:
            if pending and (pending[0].shape != pixels.shape or len(pending) == batch_size):
                flush()
            pending.append(pixels)
            paths.append(names[index])
            sizes.append((int(size[0]), int(size[1])))
        if bar is not None:
            bar.update(1)
    flush()
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
    if not arrays:
        arrays = {"descriptors": np.zeros((0, 0), dtype=np.float32)}
    return ShardRows(arrays, paths, sizes, skipped)


@dataclass
class Embedded:
    """Features of a small set of images in memory: ``paths`` (n,) of the readable images,
    ``descriptors`` (n, D), ``patch_tokens`` (see :class:`EmbedSettings`; None without),
    ``patch_grids`` (n, 2) for full grids, and the ``skipped`` images with their reasons."""

    paths: list[str]
    descriptors: np.ndarray
    patch_tokens: Optional[np.ndarray]
    patch_grids: Optional[np.ndarray]
    skipped: list[dict[str, str]]


def embed(weights: str | Path, data: str | Path | Sequence[str | Path], settings: EmbedSettings = EmbedSettings(),
          which: str = "teacher", device: str = "auto", batch_size: int = 32, num_workers: int = 0) -> Embedded:
    """Features of the images of a folder, a list file or a sequence of paths, returned as
    arrays (for sets that fit in memory; :func:`run_embed` writes a feature folder)."""
    if isinstance(data, (str, Path)):
        files, names, _ = list_inputs(data)
    else:
        files, names = [Path(p) for p in data], [str(p) for p in data]
    harness = BackboneHarness(weights, which, device, batch_size=batch_size, num_workers=num_workers, progress=False)
    loaded = harness.load()
    settings.check(loaded.module)
    rows = embed_span(loaded, files, names, range(len(files)), settings, batch_size, num_workers)
    return Embedded(rows.paths, rows.arrays["descriptors"], rows.arrays.get("patch_tokens"),
                    rows.arrays.get("patch_grids"), rows.skipped)


def _listing_sha256(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _run_record(harness: BackboneHarness, data: Path, names: Sequence[str], settings: EmbedSettings) -> dict[str, Any]:
    """What identifies a feature folder's content: weights, data listing and settings."""
    return {"weights": harness.identity(), "data": str(Path(data).resolve()), "images": len(names),
            "listing_sha256": _listing_sha256(names), "settings": asdict(settings)}


def _prepare_folder(output: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``output`` holds an unfinished (or finished) run of the same record to resume;
    otherwise it must be usable as a new output folder."""
    existing = output / RUN_RECORD
    if existing.is_file():
        try:
            same = json.loads(existing.read_text()) == json.loads(json.dumps(record))
        except ValueError:
            same = False
        if same:
            return True
        if not overwrite:
            raise DataError(f"{output} holds features of other weights, data or settings ({RUN_RECORD}); "
                            "choose a new folder or pass --overwrite")
    usable_output_folder(output, overwrite)
    return False


def run_embed(harness: BackboneHarness, data: str | Path, output: str | Path,
              settings: EmbedSettings = EmbedSettings(), overwrite: bool = False,
              dist_timeout_s: int = 1800) -> Optional[dict[str, Any]]:
    """Write the feature folder of ``data`` into ``output`` (resuming a run of the same weights,
    data and settings there); returns the manifest on the main process, None on the others."""
    files, names, _ = list_inputs(data)
    output = Path(output)
    record = _run_record(harness, Path(data), names, settings)
    resuming = _prepare_folder(output, record, overwrite)
    harness.resolve_device()
    module = harness.load_module()
    settings.check(module)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx: DistContext = init_distributed(harness.device, dist_timeout_s)
    try:
        with folder_lock(output, "dino embed", ctx):  # one process per output folder (rank 0 holds it)
            loaded = harness.place(module, ctx.device)
            writer = ShardWriter(output, settings.images_per_shard, settings.format, settings.dtype)
            if ctx.is_main:
                output.mkdir(parents=True, exist_ok=True)
                write_json(output / RUN_RECORD, record)
            barrier()
            shards = writer.shards(len(files))
            mine = [s for s in range(ctx.rank, shards, ctx.world_size) if not writer.is_done(s)]
            if resuming and ctx.is_main:
                log.info("resuming: %d of %d shards to write", len(mine), shards)
            todo = sum(len(writer.span(s, len(files))) for s in mine)
            with tqdm(total=todo, disable=not harness.progress or not ctx.is_main, desc="embed", unit="img",
                      smoothing=0.1) as bar:
                for shard in mine:
                    rows = embed_span(loaded, files, names, writer.span(shard, len(files)), settings,
                                      harness.batch_size, harness.num_workers, bar)
                    writer.write(shard, rows)
            barrier()
            manifest = None
            if ctx.is_main:
                manifest = writer.finish(shards, {
                    "command": "dino embed", "weights": harness.describe(loaded),
                    "architecture": describe_backbone(loaded.module), "data": record["data"],
                    "listing_sha256": record["listing_sha256"], "images": len(files), "settings": asdict(settings),
                    "descriptor": _describe_descriptor(settings), "dtype": settings.dtype, "format": settings.format,
                    "images_per_shard": settings.images_per_shard, "processes": ctx.world_size})
            barrier()
            return manifest
    finally:
        if owns_group:
            shutdown_distributed()


def _describe_descriptor(settings: EmbedSettings) -> str:
    what = {"cls": "backbone output (ViT [CLS])", "gem": f"GeM (p={settings.gem_p}) of the patch tokens",
            "avg": "mean patch token", "cls+avg": "[CLS] then the mean patch token"}[settings.pool]
    if settings.multiscale:
        what += ", averaged over scales 1, 1/sqrt(2), 1/2"
    return what + (", L2-normalised" if settings.normalize else "")


__all__ = ["EmbedSettings", "Embedded", "POOLS", "embed", "list_inputs", "run_embed", "MANIFEST"]
