"""timm's ViT blocks run on packed token sequences: several batches of sequences of different
lengths (a global and a local crop resolution) go through each block as one (T, d) token
matrix, so every linear layer, LayerNorm and MLP runs once for all of them; only the
attention, which mixes tokens within a sequence, runs per sequence length.

This is DINOv2's one backbone pass for all crops, written as variable-length attention
(one attention call per sequence length) instead of a block-diagonal mask, so no work is
spent on token pairs of different sequences. With a single batch it is exactly timm's
``Block.forward`` (same operations, same random draws for drop-path).

The attention kernel follows the tensors: torch's fused ``scaled_dot_product_attention``,
except for bf16 on a CPU, where two batched matmuls and a softmax are faster (torch's fused
CPU attention in bf16 ran several times slower, fwd + bwd, than this on an x86 CPU with
AVX512-BF16, for sequences of 37 and 197 tokens; ``benchmarks/compare_reference.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class TokenLayout:
    """How a packed (T, d) token matrix splits into batches of sequences: ``groups`` holds
    (sequences, tokens per sequence) per batch, in order; T = sum of sequences * tokens."""

    groups: tuple[tuple[int, int], ...]

    @property
    def sizes(self) -> list[int]:
        """Tokens of each batch."""
        return [count * length for count, length in self.groups]

    @property
    def num_sequences(self) -> int:
        return sum(count for count, _ in self.groups)

    @property
    def num_tokens(self) -> int:
        return sum(self.sizes)

    def first_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Packed (T, d) -> (num_sequences, d): each sequence's first token ([CLS]), in order."""
        firsts = [rows.view(count, length, -1)[:, 0] for (count, length), rows in zip(self.groups, x.split(self.sizes))]
        return firsts[0] if len(firsts) == 1 else torch.cat(firsts)


def attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v for (B, H, N, hd) queries, keys and values of timm
    ``Attention`` ``attn`` -> (B, H, N, hd): its fused kernel unless ``attn.fused_attn`` is off or
    the tensors are bf16 on a CPU, else timm's unfused path (attention dropout on the weights)."""
    if attn.fused_attn and not (q.device.type == "cpu" and q.dtype == torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.attn_drop(weights) @ v


def packed_attention(attn: nn.Module, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """timm ``Attention`` (qkv, q/k norms, proj) on packed tokens (T, d) -> (T, d)."""
    qkv = attn.qkv(x)
    outputs = []
    for (count, length), rows in zip(layout.groups, qkv.split(layout.sizes)):
        q, k, v = rows.reshape(count, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        outputs.append(attention(attn, q, k, v).transpose(1, 2).reshape(count * length, -1))
    x = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return attn.proj_drop(attn.proj(attn.norm(x)))


def packed_drop_path(x: torch.Tensor, drop: nn.Module, layout: TokenLayout) -> torch.Tensor:
    """timm ``DropPath`` per sequence on packed tokens (T, d): each sequence's residual branch is
    zeroed with probability p and the kept ones scaled by 1 / (1 - p)."""
    probability = getattr(drop, "drop_prob", 0.0)
    if not drop.training or probability == 0.0:
        return x
    keep = 1.0 - probability
    mask = x.new_empty(layout.num_sequences, 1).bernoulli_(keep)  # timm's draw: one per sequence
    if keep > 0.0 and getattr(drop, "scale_by_keep", True):
        mask.div_(keep)
    per_token = [rows.repeat_interleave(length, dim=0)
                 for (_, length), rows in zip(layout.groups, mask.split([count for count, _ in layout.groups]))]
    return x * (per_token[0] if len(per_token) == 1 else torch.cat(per_token))


def packed_block(block: Block, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """timm's pre-norm ``Block`` on packed tokens (T, d) -> (T, d)."""
    x = x + packed_drop_path(block.ls1(packed_attention(block.attn, block.norm1(x), layout)), block.drop_path1, layout)
    return x + packed_drop_path(block.ls2(block.mlp(block.norm2(x))), block.drop_path2, layout)


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, layout: TokenLayout, checkpointed: bool = False) -> torch.Tensor:
    """All blocks on packed tokens (T, d). With ``checkpointed`` (and gradients on), each block's
    activations are recomputed in the backward pass instead of kept (drop-path redraws the
    same masks: the random state is restored for the recomputation)."""
    recompute = checkpointed and torch.is_grad_enabled()
    for block in blocks:
        if recompute:
            x = checkpoint(packed_block, block, x, layout, use_reentrant=False)
        else:
            x = packed_block(block, x, layout)
    return x
