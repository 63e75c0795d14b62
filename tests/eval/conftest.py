"""Backbones with known answers for the attention, mask and video tests (as fixtures)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F


class BrightnessAttention(nn.Module):
    """A 'ViT' whose [CLS] attends to each patch in proportion to the patch's mean red value
    (normalised input > 0 counts as bright), the same for every head."""

    patch_size = 8
    num_prefix_tokens = 1

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads

    def last_selfattention(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        bright = (images[:, :1] > 0).float()
        per_patch = F.avg_pool2d(bright, self.patch_size).flatten(1)  # (B, N)
        batch, n = per_patch.shape
        row = torch.cat([torch.zeros(batch, 1), per_patch], dim=1)
        row = row / row.sum(dim=1, keepdim=True).clamp_min(1e-12)
        attention = torch.zeros(batch, self.heads, n + 1, n + 1)
        attention[:, :, 0] = row[:, None]
        return attention[:, :, :1] if cls_only else attention


class PositionFeatures(nn.Module):
    """A 'ViT' whose patch tokens are one-hot position codes: every patch of a frame is
    orthogonal to every other, and a patch matches itself exactly in an identical frame."""

    patch_size = 8
    num_prefix_tokens = 1

    def last_selfattention(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        raise AssertionError("not used")

    def intermediate_layers(self, images: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        batch, _, height, width = images.shape
        tokens = (height // self.patch_size) * (width // self.patch_size)
        codes = torch.eye(tokens + 1)[None].expand(batch, -1, -1)
        return [codes]


@pytest.fixture
def brightness_backbone():
    """Factory: BrightnessAttention(heads)."""
    return BrightnessAttention


@pytest.fixture
def position_backbone() -> PositionFeatures:
    return PositionFeatures()


@pytest.fixture
def dinossl_log(caplog):
    """caplog that also sees the 'dinossl' logger after the CLI has stopped it propagating."""
    import logging

    logger = logging.getLogger("dinossl")
    logger.addHandler(caplog.handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(previous)
