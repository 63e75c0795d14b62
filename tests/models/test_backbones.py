import pytest
import torch

from dinossl.config import ModelConfig
from dinossl.models import MultiCropNetwork, backbone_spec, build_backbone, build_network, build_resnet50, build_vit
from dinossl.models.multicrop import group_by_resolution


@pytest.mark.parametrize("arch,dim,heads", [("vit_tiny", 192, 3), ("vit_small", 384, 6), ("vit_base", 768, 12)])
def test_vit_sizes(arch, dim, heads):
    model = build_vit(arch, patch_size=16)
    assert model.embed_dim == dim and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == heads
    assert model.pos_embed.shape == (1, 1 + 14 * 14, dim)
    assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[0].attn.qkv.bias is not None


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=4, img_size=32, depth=3).eval()


def test_vit_forward_is_normed_cls(vit):
    x = torch.randn(2, 3, 32, 32)
    cls = vit(x)
    assert cls.shape == (2, 192)
    torch.testing.assert_close(cls, vit.forward_features(x)[:, 0])
    torch.testing.assert_close(vit.intermediate_layers(x, 1)[0][:, 0], cls)


def test_vit_any_size_divisible_by_patch(vit):
    for size in [(16, 16), (24, 40)]:
        assert vit(torch.randn(1, 3, *size)).shape == (1, 192)
    attn = vit.last_selfattention(torch.randn(1, 3, 24, 40))
    assert attn.shape == (1, 3, 1 + 6 * 10, 1 + 6 * 10)


def test_last_selfattention_matches_timm_unfused(vit):
    x = torch.randn(2, 3, 32, 32)
    attn = vit.last_selfattention(x)
    assert attn.shape == (2, 3, 65, 65)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 65))
    captured = {}
    last = vit.blocks[-1].attn
    last.fused_attn = False
    handle = last.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o))
    try:
        vit(x)
    finally:
        handle.remove()
        last.fused_attn = True
    torch.testing.assert_close(attn, captured["attn"])
    torch.testing.assert_close(vit.last_selfattention(x, cls_only=True), attn[:, :, :1])


def test_intermediate_layers(vit):
    x = torch.randn(2, 3, 32, 32)
    outs = vit.intermediate_layers(x, 3)
    assert len(outs) == 3 and all(o.shape == (2, 65, 192) for o in outs)
    with pytest.raises(ValueError):
        vit.intermediate_layers(x, 4)


def test_resnet50_pooled_without_fc():
    model = build_resnet50().eval()
    assert model.embed_dim == 2048
    assert not any(k.startswith("fc.") for k in model.state_dict())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    with pytest.raises(TypeError):
        model.last_selfattention(torch.randn(1, 3, 64, 64))


def test_group_by_resolution():
    crops = [torch.zeros(1, 3, 8, 8)] * 2 + [torch.zeros(1, 3, 4, 4)] * 3 + [torch.zeros(1, 3, 8, 8)]
    assert group_by_resolution(crops) == [(0, 2), (2, 5), (5, 6)]


def test_multicrop_network_equals_per_crop_computation():
    torch.manual_seed(0)
    config = ModelConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=2, out_dim=50, head_hidden_dim=32,
                         head_bottleneck_dim=16)
    net = build_network(config, student=False).eval()
    crops = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(3)]
    out = net(crops)
    assert out.shape == (5 * 3, 50)
    expected = torch.cat([net.head(net.backbone(c)) for c in crops])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_drop_path_on_student_only():
    config = ModelConfig(arch="vit_tiny", patch_size=8, img_size=32, depth=2, drop_path=0.1)
    student, teacher = build_network(config, student=True), build_network(config, student=False)
    assert student.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert isinstance(teacher.backbone.blocks[-1].drop_path1, torch.nn.Identity)
    assert isinstance(build_backbone(backbone_spec(ModelConfig(arch="resnet50"))), torch.nn.Module)
    assert isinstance(student, MultiCropNetwork)


def test_initialisation_follows_the_reference_recipe():
    """The reference starts [CLS] and the position embeddings at a normal of std 0.02 truncated to
    [-2, 2], every Linear weight likewise with zero bias, LayerNorms at 1 and 0 (timm alone would
    start [CLS] at std 1e-6)."""
    torch.manual_seed(0)
    model = build_vit("vit_base", patch_size=16, depth=2)
    for tensor in (model.cls_token, model.pos_embed):
        assert 0.018 < tensor.std().item() < 0.022 and tensor.abs().max() <= 2.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert 0.019 < module.weight.std().item() < 0.021 and torch.all(module.bias == 0)
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_cpu_bf16_patch_embedding_is_timms_convolution(vit, monkeypatch):
    # Which path ran is proven by counting calls, never by the two bf16 results differing: on some
    # CPUs (Intel Xeon with AMX) the matmul and the convolution round to the very same tensor.
    convolutions, matmuls = [], []
    hook = vit.patch_embed.proj.register_forward_hook(lambda module, args, out: convolutions.append(args[0].shape))
    linear = torch.nn.functional.linear

    def counted_linear(inputs, weight, bias=None):
        matmuls.append(tuple(weight.shape))
        return linear(inputs, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counted_linear)
    x = torch.randn(3, 3, 32, 48)
    try:
        fp32 = vit._embed_patches(x)
        assert (len(convolutions), matmuls) == (1, [])  # fp32: timm's own convolution, no matmul
        assert torch.equal(fp32, vit.patch_embed(x))
        convolutions.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            patches = vit._embed_patches(x)
            assert (convolutions, matmuls) == ([], [(192, 3 * vit.patch_size ** 2)])  # the matmul path ran
            convolved = vit.patch_embed(x)
    finally:
        hook.remove()
    assert patches.shape == (3, 32 // vit.patch_size, 48 // vit.patch_size, 192)
    assert patches.dtype == torch.bfloat16
    exact = vit.patch_embed(x)  # fp32; both bf16 results round the same sum
    torch.testing.assert_close(patches.float(), exact, rtol=0.02, atol=0.02)
    torch.testing.assert_close(convolved.float(), exact, rtol=0.02, atol=0.02)
