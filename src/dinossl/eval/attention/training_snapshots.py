"""Attention maps of a few fixed images during training (``train.attention_every``): the
teacher's last-block [CLS] attention, per head, drawn as one sheet per snapshot
(``attention/epoch_NNNN.png`` in the run folder) and handed to TensorBoard / the tracker.

Each row is one image: the picture, then each head's map (min-max scaled, gray levels, nearest
upsampling to the picture's size), then the mean over heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from dinossl.data import open_images
from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.eval.attention.maps import cls_attention
from dinossl.eval.attention.overlay import tile
from dinossl.safe_files import write_atomic
from dinossl.train.distiller import Distiller
from dinossl.train.trainer import MonitorReport

SNAPSHOT_FOLDER = "attention"
SNAPSHOT_IMAGES = 4


def _gray(heat: torch.Tensor, size: int) -> Image.Image:
    """(h, w) map -> (size, size) gray picture, min-max scaled, nearest upsampling."""
    heat = heat.double()
    span = float(heat.max() - heat.min())
    scaled = ((heat - heat.min()) / span if span > 0 else torch.zeros_like(heat)) * 255
    return Image.fromarray(scaled.round().byte().numpy(), mode="L").resize((size, size), Image.NEAREST).convert("RGB")


class AttentionDuringTraining:
    """The trainer's monitor for ``train.attention_every``: a sheet of the teacher's attention
    maps of ``count`` fixed images (``folder``'s first ones, or the built-in sample's held-out
    ones) every ``every`` epochs, written into ``run_dir/attention/``."""

    def __init__(self, run_dir: str | Path, image_size: int, every: int, folder: Optional[str] = None,
                 count: int = SNAPSHOT_IMAGES) -> None:
        source = open_images(folder, "heldout")
        crop = v2.Compose([v2.Resize(image_size, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(image_size)])
        self.pictures = [crop(source.load(i)[0].convert("RGB")) for i in range(min(count, len(source)))]
        normalise = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.images = torch.stack([normalise(p) for p in self.pictures])  # (N, 3, S, S)
        self.folder, self.every, self.size = Path(run_dir) / SNAPSHOT_FOLDER, every, image_size

    def sheet(self, backbone: torch.nn.Module) -> Image.Image:
        """Rows of picture | head maps | mean, for the fixed images."""
        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()
        try:
            maps = cls_attention(backbone, self.images.to(device)).cpu()  # (N, heads, h, w)
        finally:
            backbone.train(was_training)
        tiles = []
        for picture, heads in zip(self.pictures, maps):
            tiles += [picture, *(_gray(h, self.size) for h in heads), _gray(heads.mean(0), self.size)]
        return tile(tiles, columns=maps.shape[1] + 2)

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        if not self.every or epoch % self.every:
            return None
        picture = self.sheet(distiller.teacher.backbone)
        path = self.folder / f"epoch_{epoch:04d}.png"
        write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))
        return MonitorReport({"kind": "attention", "epoch": epoch, "file": str(path)},
                             pictures={"attention/teacher": np.asarray(picture)})

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        return None
