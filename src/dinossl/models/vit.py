"""Vision Transformer backbones built on timm, with the extra outputs DINO's tools need."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

# name -> (embed_dim, num_heads); all have depth 12 and MLP ratio 4.
VIT_SIZES: dict[str, tuple[int, int]] = {
    "vit_tiny": (192, 3),
    "vit_small": (384, 6),
    "vit_base": (768, 12),
}


class ViTBackbone(VisionTransformer):
    """timm ViT whose forward returns the [CLS] token after the final LayerNorm.

    Parameter names and shapes are those of the released DINO weights (cls_token, pos_embed,
    patch_embed.proj, blocks.i.*, norm), so their state dicts load without renaming.
    Input images may have any size divisible by the patch size (position embeddings are
    interpolated).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
        )
        self.patch_size = patch_size

    def _tokens_before_blocks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + H/p * W/p, d) embedded tokens with positions."""
        x = self.patch_embed(images)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def intermediate_layers(self, images: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each through the final LayerNorm: n x (B, 1+N, d)."""
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"n must be in [1, {len(self.blocks)}], got {n}")
        x = self._tokens_before_blocks(images)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index >= len(self.blocks) - n:
                outputs.append(self.norm(x))
        return outputs

    def last_selfattention(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Softmaxed self-attention of the last block: (B, heads, 1+N, 1+N).

        With ``cls_only`` only the [CLS] query's row is computed: (B, heads, 1, 1+N), memory
        linear in N instead of quadratic (ViT-S/8 at 480x640: 0.5 GB -> 0.1 MB).
        """
        x = self._tokens_before_blocks(images)
        for block in self.blocks[:-1]:
            x = block(x)
        attn = self.blocks[-1].attn
        batch, tokens, _ = x.shape
        qkv = attn.qkv(self.blocks[-1].norm1(x))
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if cls_only:
            q = q[:, :, :1]
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def build_vit(
    arch: str,
    patch_size: int = 16,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    depth: int | None = None,
) -> ViTBackbone:
    """ViT-tiny/small/base (depth 12 unless ``depth`` is given) with the given patch size."""
    if arch not in VIT_SIZES:
        raise ValueError(f"unknown ViT {arch!r}; choose from {', '.join(VIT_SIZES)}")
    embed_dim, num_heads = VIT_SIZES[arch]
    return ViTBackbone(
        embed_dim=embed_dim,
        depth=12 if depth is None else depth,
        num_heads=num_heads,
        patch_size=patch_size,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
    )
