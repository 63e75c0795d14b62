"""Vision Transformer backbones built on timm, with the extra outputs DINO's tools need."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dinossl.models.packed_blocks import TokenLayout, run_blocks
from dinossl.models.position_embedding import resample_position_embeddings
from dinossl.models.pretrained_cfg import evaluation_cfg

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
    Input images may have any size (H, W) of at least one patch; the grid is (H // p, W // p)
    and the position embeddings are resampled to it with the reference implementation's rule
    (:func:`~dinossl.models.position_embedding.resample_position_embeddings`) on every path:
    ``forward``, ``forward_features``, ``intermediate_layers``, ``last_selfattention``.

    ``options`` go to timm's ``VisionTransformer`` (e.g. ``drop_rate``, ``num_classes``: a
    classifier head on the [CLS] token). ``pretrained_cfg`` holds DINO's evaluation transform
    for ``timm.data.resolve_data_config``.
    ``forward_packed`` runs images of several sizes through the blocks in one pass
    (:mod:`~dinossl.models.packed_blocks`); timm's ``set_grad_checkpointing()`` makes
    ``forward``, ``forward_features`` and ``forward_packed`` recompute each block's activations
    in the backward pass instead of keeping them.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
        **options: Any,
    ) -> None:
        settings: dict[str, Any] = dict(mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="token")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **{**settings, **options},
        )
        self.patch_size = patch_size
        self.pretrained_cfg = evaluation_cfg(img_size, num_classes=self.num_classes)
        # timm starts the [CLS] token at N(0, 1e-6); the reference, like the position embeddings,
        # at a normal of std 0.02 truncated to [-2, 2].
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _add_positions(self, patches: torch.Tensor, square_image: bool) -> torch.Tensor:
        """(B, rows, cols, d) patch embeddings -> (B, 1 + rows*cols, d) with [CLS] and positions."""
        batch, rows, cols, dim = patches.shape
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), patches.reshape(batch, rows * cols, dim)], dim=1)
        return self.pos_drop(tokens + resample_position_embeddings(self.pos_embed, rows, cols, square_image))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's hook (its own methods call it): (B, rows, cols, d) -> (B, 1 + rows*cols, d),
        the image taken as square when the grid is."""
        return self._add_positions(x, square_image=x.shape[1] == x.shape[2])

    def _embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H//p, W//p, d): the patch embedding. Under bf16 autocast on a
        CPU its convolution (kernel = stride = p) runs as one matmul over the flattened patches:
        the same sum, several times faster there (fwd + bwd) than the CPU's bf16 convolution. Elsewhere
        (fp32 included, where the reference's figures are matched to float rounding) timm's
        convolution."""
        batch, channels, height, width = images.shape
        p = self.patch_size
        cpu_bf16 = (images.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        if not cpu_bf16 or height % p or width % p:
            return self.patch_embed(images)
        rows, cols = height // p, width // p
        patches = images.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        proj = self.patch_embed.proj
        embedded = F.linear(patches.reshape(batch, rows, cols, channels * p * p),
                            proj.weight.reshape(proj.out_channels, -1), proj.bias)
        return self.patch_embed.norm(embedded)

    def _tokens_before_blocks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + (H//p) * (W//p), d) embedded tokens with positions."""
        x = self._add_positions(self._embed_patches(images), square_image=images.shape[-2] == images.shape[-1])
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + N, d) tokens after the final LayerNorm."""
        x = self._tokens_before_blocks(images)
        batch, tokens, dim = x.shape
        x = run_blocks(self.blocks, x.reshape(batch * tokens, dim), TokenLayout(((batch, tokens),)),
                       self.grad_checkpointing)
        return self.norm(x).view(batch, tokens, dim)

    def forward_packed(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """Image batches of different sizes, (B_g, 3, H_g, W_g) each -> (sum of B_g, d) [CLS]
        tokens after the final LayerNorm, batch after batch: the tokens of all batches go
        through each block together (attention stays within each image)."""
        tokens = [self._tokens_before_blocks(images) for images in batches]
        layout = TokenLayout(tuple((t.shape[0], t.shape[1]) for t in tokens))
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens]) if len(tokens) > 1 else tokens[0].flatten(0, 1)
        x = run_blocks(self.blocks, x, layout, self.grad_checkpointing)
        return self.forward_head(self.norm(layout.first_tokens(x))[:, None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) [CLS] token after the final LayerNorm (which, acting token by
        token, is applied to the [CLS] token only)."""
        return self.forward_packed([images])

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
    **options: Any,
) -> ViTBackbone:
    """ViT-tiny/small/base (depth 12 unless ``depth`` is given) with the given patch size;
    ``options`` go to timm's ``VisionTransformer``."""
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
        **options,
    )
