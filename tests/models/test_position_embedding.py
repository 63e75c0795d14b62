"""Position embeddings at any grid: the reference DINO rule, checked against plain restatements.

The rule (the reference's ``interpolate_pos_encoding``): a table laid out for a g x g grid is
used as is for a square image with g*g patches; otherwise its g x g patch part is resampled
bicubically (Keys' cubic with a = -0.75, align_corners False, no antialiasing) with the scale
factors ((H/p + 0.1) / g, (W/p + 0.1) / g), which set where each output samples the grid:
output i of an axis reads the source at (i + 0.5) / scale - 0.5.

Both the resampling and the ViT are restated here in plain code (a NumPy bicubic, a ViT made of
functional ops) and compared on fixed weights at the sizes DINO uses.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinossl.models import build_vit
from dinossl.models.position_embedding import resample_position_embeddings

CUBIC_A = -0.75  # PyTorch's bicubic; the reference uses F.interpolate(mode="bicubic")


def _cubic_weights(t: float) -> list[float]:
    """Keys' cubic convolution weights of the 4 neighbours at offsets -1, 0, 1, 2 from floor(x)."""

    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resample_axis(values: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    """Bicubic resampling of axis 0 of ``values`` (g, ...) to ``out_len`` with scale factor
    ``scale`` (align_corners False, border samples repeated): output i reads the source at
    (i + 0.5) / scale - 0.5."""
    g = values.shape[0]
    step = np.float32(1.0 / scale)  # PyTorch keeps 1/scale and the source index in float32
    out = []
    for i in range(out_len):
        x = float(step * np.float32(i + 0.5) - np.float32(0.5))
        x0 = math.floor(x)
        weights = _cubic_weights(x - x0)
        out.append(sum(w * values[min(max(x0 - 1 + k, 0), g - 1)] for k, w in enumerate(weights)))
    return np.stack(out)


def _hand_positions(table: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """The reference rule, restated with the NumPy bicubic above: (1, 1 + g*g, d) -> (1, 1 + R*C, d)."""
    stored = table.shape[1] - 1
    rows, cols = height // patch, width // patch
    if rows * cols == stored and height == width:
        return table
    g, d = math.isqrt(stored), table.shape[-1]
    grid = table[0, 1:].detach().double().numpy().reshape(g, g, d)
    grid = _resample_axis(grid, rows, (rows + 0.1) / g)  # (rows, g, d)
    grid = _resample_axis(grid.transpose(1, 0, 2), cols, (cols + 0.1) / g).transpose(1, 0, 2)  # (rows, cols, d)
    patches = torch.from_numpy(grid.reshape(1, rows * cols, d)).float()
    return torch.cat([table[:, :1], patches], dim=1)


def _plain_vit(state: dict, images: torch.Tensor, patch: int, heads: int, last: int):
    """A ViT from functional ops on a state dict: the last ``last`` block outputs through the
    final LayerNorm, and the last block's softmaxed attention (B, heads, N, N)."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    batch, dim = x.shape[:2]
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + _hand_positions(state["pos_embed"], images.shape[-2], images.shape[-1], patch)
    tokens = x.shape[1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    outputs, attention = [], None

    def layer_norm(y, name):
        return F.layer_norm(y, (dim,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    for i in range(depth):
        b = f"blocks.{i}."
        qkv = F.linear(layer_norm(x, b + "norm1"), state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(mixed, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        hidden = F.gelu(F.linear(layer_norm(x, b + "norm2"), state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"]))
        x = x + F.linear(hidden, state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"])
        if i >= depth - last:
            outputs.append(layer_norm(x, "norm"))
    return outputs, attention


# (arch, patch, training size -> grid g, input sizes); the ViT-S grids of the released weights
# (14 for /16, 28 for /8 at 224 px) and the vit-tiny-cifar preset's 4 x 4 grid with 2 x 2 local crops.
CASES = [
    ("vit_small", 16, 224, [(224, 224), (96, 96), (320, 480)]),
    ("vit_small", 8, 224, [(224, 224), (96, 96), (320, 480)]),
    ("vit_tiny", 8, 32, [(32, 32), (16, 16), (24, 40)]),
]


@pytest.mark.parametrize("arch, patch, img_size, sizes", CASES, ids=["S16", "S8", "tiny-cifar"])
def test_every_path_matches_a_plain_vit_with_the_reference_positions(arch, patch, img_size, sizes):
    torch.manual_seed(0)
    model = build_vit(arch, patch_size=patch, img_size=img_size, depth=2).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.pos_embed, std=0.5)  # strong, non-smooth positions: resampling shows
        state = {k: v.detach() for k, v in model.state_dict().items()}
        heads = model.blocks[0].attn.num_heads
        for height, width in sizes:
            images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
            outputs, attention = _plain_vit(state, images, patch, heads, last=2)
            torch.testing.assert_close(model(images), outputs[-1][:, 0], rtol=0, atol=2e-5)
            for ours, plain in zip(model.intermediate_layers(images, 2), outputs):
                torch.testing.assert_close(ours, plain, rtol=0, atol=2e-5)
            torch.testing.assert_close(model.last_selfattention(images), attention, rtol=0, atol=1e-6)
            torch.testing.assert_close(model.forward_features(images), outputs[-1], rtol=0, atol=2e-5)


@pytest.mark.parametrize("grid, patch, sizes", [
    (14, 16, [(96, 96), (320, 480), (480, 320), (224, 96), (224, 32), (16, 16)]),
    (28, 8, [(96, 96), (320, 480), (224, 16)]),
    (4, 8, [(16, 16), (24, 40), (32, 16), (96, 96)]),
])
def test_resampled_table_equals_the_hand_bicubic(grid, patch, sizes):
    table = torch.randn(1, 1 + grid * grid, 24, generator=torch.Generator().manual_seed(grid))
    for height, width in sizes:
        ours = resample_position_embeddings(table, height // patch, width // patch, height == width)
        assert ours.shape == (1, 1 + (height // patch) * (width // patch), 24)
        # float32 kernel vs float64 here, on N(0, 1) values; a wrong rule (sizes instead of scale
        # factors, antialiasing, another cubic) is off by 1e-3 or more
        torch.testing.assert_close(ours, _hand_positions(table, height, width, patch), rtol=0, atol=1e-5)
        assert torch.equal(ours[:, 0], table[:, 0])  # [CLS] position untouched


def test_training_grid_uses_the_table_exactly():
    table = torch.randn(1, 1 + 14 * 14, 8)
    assert resample_position_embeddings(table, 14, 14, square_image=True) is table
    torch.manual_seed(0)
    model = build_vit("vit_small", patch_size=16, img_size=224, depth=1).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model._tokens_before_blocks(images)
        patches = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    expected = torch.cat([model.cls_token, patches], dim=1) + model.pos_embed
    assert torch.equal(tokens, expected)  # bit for bit: no resampling at 224 px


def test_scale_factors_not_sizes_set_the_sampling():
    """A 224 x 96 image at /16 keeps g = 14 rows, yet the rows are resampled with the scale
    14.1 / 14 (the reference's rule); resampling to the size would leave them as stored."""
    table = torch.randn(1, 1 + 14 * 14, 4, generator=torch.Generator().manual_seed(1))
    ours = resample_position_embeddings(table, 14, 6, square_image=False)[0, 1:].reshape(14, 6, 4)
    by_size = F.interpolate(table[:, 1:].reshape(1, 14, 14, 4).permute(0, 3, 1, 2), size=(14, 6), mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1)[0]
    assert (ours - by_size).abs().max() > 1e-3
    # and a square image with g*g patches but another shape is resampled too
    reshaped = resample_position_embeddings(table, 7, 28, square_image=False)
    assert reshaped.shape == table.shape and not torch.equal(reshaped, table)


def test_a_table_that_is_not_a_square_grid_is_refused():
    with pytest.raises(ValueError, match="square grid"):
        resample_position_embeddings(torch.zeros(1, 1 + 12, 4), 3, 5, square_image=False)


@pytest.mark.parametrize("rows,cols,square", [(14, 14, True), (14, 14, False), (14, 6, False), (20, 20, True),
                                              (3, 5, False), (2, 2, True)])
def test_in_graph_rule_equals_the_interpolation(rows, cols, square):
    """The separable-matrix form used under torch.export (ONNX) gives the bicubic resampling."""
    from dinossl.models.position_embedding import _resample_in_graph

    table = torch.randn(1, 1 + 14 * 14, 8)
    expected = resample_position_embeddings(table, rows, cols, square)
    assert torch.allclose(_resample_in_graph(table, rows, cols, square), expected, atol=1e-5, rtol=0)
