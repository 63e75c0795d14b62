"""Packed ViT blocks: one batch is timm's Block exactly; several resolutions in one pass equal
one pass per resolution; drop-path per sequence; checkpointed blocks give the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinossl.config import ModelConfig
from dinossl.models import build_network
from dinossl.models.packed_blocks import TokenLayout, attention, packed_drop_path, run_blocks
from dinossl.models.vit import build_vit


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=8, img_size=32, drop_path_rate=0.3, depth=3)


def _images(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def test_layout_sizes_and_first_tokens_by_hand():
    layout = TokenLayout(((2, 3), (3, 2)))
    assert layout.sizes == [6, 6] and layout.num_sequences == 5 and layout.num_tokens == 12
    x = torch.arange(12.0)[:, None]
    # sequences start at rows 0, 3 | 6, 8, 10
    assert layout.first_tokens(x).flatten().tolist() == [0.0, 3.0, 6.0, 8.0, 10.0]


def test_one_batch_is_timm_block_exactly_with_drop_path(vit):
    (images,) = _images(1, (4, 3, 32, 32))
    vit.train()
    tokens = vit._tokens_before_blocks(images)
    torch.manual_seed(5)
    ours = run_blocks(vit.blocks, tokens.flatten(0, 1), TokenLayout(((4, tokens.shape[1]),)))
    torch.manual_seed(5)
    timm = vit.blocks(tokens)  # timm's own Block.forward, same random draws
    assert torch.equal(ours.view_as(timm), timm)
    assert not torch.equal(timm, vit.eval().blocks(tokens))  # drop-path did act


def test_packed_pass_equals_one_pass_per_resolution(vit):
    large, small = _images(2, (3, 3, 32, 32), (5, 3, 16, 16))
    vit.eval()
    torch.testing.assert_close(vit.forward_packed([large, small]), torch.cat([vit(large), vit(small)]),
                               rtol=1e-6, atol=1e-6)


def test_packed_network_matches_two_passes_in_logits_and_gradients():
    config = ModelConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=2, drop_path=0.0, out_dim=32,
                         head_hidden_dim=16, head_bottleneck_dim=8)
    torch.manual_seed(0)
    two_passes = build_network(config, student=True)
    packed = build_network(config, student=True)
    packed.load_state_dict(two_passes.state_dict())
    packed.pack_views = True
    crops = _images(3, (4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16))
    expected, got = two_passes(crops), packed(crops)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    expected.square().mean().backward()
    got.square().mean().backward()
    for (name, a), b in zip(two_passes.named_parameters(), packed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_packed_drop_path_drops_whole_sequences():
    layout = TokenLayout(((300, 3), (200, 2)))
    drop = torch.nn.Module()
    drop.drop_prob, drop.scale_by_keep = 0.25, True
    torch.manual_seed(0)
    out = packed_drop_path(torch.ones(layout.num_tokens, 4), drop, layout)
    sequences = [rows.view(count, length * 4) for (count, length), rows in zip(layout.groups, out.split(layout.sizes))]
    per_sequence = torch.cat([s[:, 0] for s in sequences])
    for s in sequences:  # every token and channel of a sequence shares its fate
        assert torch.equal(s, s[:, :1].expand_as(s))
    assert set(per_sequence.tolist()) == {0.0, torch.tensor(1 / 0.75).item()}  # float32 1/0.75
    kept = (per_sequence > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.06  # 500 Bernoulli(0.75) draws: 3 standard deviations = 0.058
    drop.eval()
    assert torch.equal(packed_drop_path(torch.ones(5, 2), drop, TokenLayout(((5, 1),))), torch.ones(5, 2))


def test_bf16_on_cpu_uses_matmul_attention(vit, monkeypatch):
    # Which path ran is proven by counting the fused kernel's calls, not by results differing
    # (two kernels may round to the same tensor on some CPUs).
    fused_kernel, fused_calls = F.scaled_dot_product_attention, []

    def counted_fused(*args, **kwargs):
        fused_calls.append(args[0].dtype)
        return fused_kernel(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted_fused)
    attn = vit.blocks[0].attn
    q, k, v = (t.to(torch.bfloat16) for t in _images(4, (2, 3, 17, 64), (2, 3, 17, 64), (2, 3, 17, 64)))
    by_hand = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # timm's unfused formula
    ours = attention(attn, q, k, v)
    assert fused_calls == []  # bf16 on a CPU: the matmul path
    assert torch.equal(ours, by_hand)  # the same operations in the same order
    fused = fused_kernel(q.float(), k.float(), v.float())
    torch.testing.assert_close(ours.float(), fused, rtol=0.05, atol=0.02)
    q32, k32, v32 = q.float(), k.float(), v.float()
    assert torch.equal(attention(attn, q32, k32, v32), fused_kernel(q32, k32, v32))
    assert fused_calls == [torch.float32]  # float32: the fused kernel


def test_checkpointed_blocks_give_the_same_gradients(vit):
    large, small = _images(5, (2, 3, 32, 32), (3, 3, 16, 16))
    vit.train()
    grads = []
    for checkpointed in (False, True):
        vit.zero_grad()
        vit.set_grad_checkpointing(checkpointed)
        torch.manual_seed(7)  # drop-path on: the recomputation must redraw the same masks
        vit.forward_packed([large, small]).square().sum().backward()
        grads.append([p.grad.clone() for p in vit.parameters()])
    vit.set_grad_checkpointing(False)
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)
