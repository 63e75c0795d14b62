import warnings

import pytest
import torch
import torch.nn.functional as F

from dinossl.models import DINOHead, WeightNormLinear
from dinossl.models.head import _NormalisedLinear


def test_shapes_and_key_layout():
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    assert head(torch.randn(5, 32)).shape == (5, 100)
    keys = set(head.state_dict())
    assert keys == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
                    "last_layer.weight_g", "last_layer.weight_v"}
    assert head.last_layer.weight_g.shape == (100, 1) and head.last_layer.weight_v.shape == (100, 16)


def test_bn_head_key_layout():
    head = DINOHead(32, out_dim=10, hidden_dim=64, bottleneck_dim=16, use_bn=True)
    linear = {k.rsplit(".", 1)[0] for k in head.state_dict() if k.startswith("mlp.") and k.endswith("weight")}
    assert linear == {"mlp.0", "mlp.1", "mlp.3", "mlp.4", "mlp.6"}
    assert isinstance(head.mlp[1], torch.nn.BatchNorm1d) and isinstance(head.mlp[4], torch.nn.BatchNorm1d)


def test_norm_last_layer_freezes_g_at_one():
    head = DINOHead(8, out_dim=12, hidden_dim=16, bottleneck_dim=4, norm_last_layer=True)
    assert torch.equal(head.last_layer.weight_g, torch.ones(12, 1))
    assert not head.last_layer.weight_g.requires_grad and head.last_layer.weight_v.requires_grad
    free = DINOHead(8, out_dim=12, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
    assert torch.equal(free.last_layer.weight_g, torch.ones(12, 1))  # the reference fills g with 1 either way


def test_last_layer_parameters_in_weight_norm_order_and_values():
    """Same names, order, shapes and initial values as torch's weight norm of nn.Linear(bias=False)
    with g filled with 1 (the reference's last layer), drawn from the same generator state."""
    torch.manual_seed(3)
    ours = WeightNormLinear(4, 12, fix_norm=False)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the reference uses the deprecated form
        reference = torch.nn.utils.weight_norm(torch.nn.Linear(4, 12, bias=False))
    reference.weight_g.data.fill_(1)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()] == [
        "weight_g", "weight_v"]
    for (_, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b)
    x = torch.randn(5, 4)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-6, atol=1e-7)
    head = DINOHead(8, out_dim=12, hidden_dim=16, bottleneck_dim=4)
    assert [n for n, _ in head.named_parameters()][-2:] == ["last_layer.weight_g", "last_layer.weight_v"]


def test_forward_is_normalised_bottleneck_times_unit_prototypes():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=12, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(3, 8)
    z = F.normalize(head.mlp(x), dim=-1)
    prototypes = F.normalize(head.last_layer.weight_v, dim=1)
    torch.testing.assert_close(head(x), z @ prototypes.T)
    # logits are cosines: bounded by 1 whatever the scale of v
    head.last_layer.weight_v.data *= 100
    assert head(x).abs().max() <= 1 + 1e-5


def test_hidden_layer_init():
    torch.manual_seed(0)
    head = DINOHead(384, out_dim=10, hidden_dim=2048, bottleneck_dim=256)
    for index in (0, 2, 4):
        layer = head.mlp[index]
        assert torch.all(layer.bias == 0)
        # bounds are absolute (+-2), as in the reference: at std 0.02 nothing is truncated
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert layer.weight.abs().max() <= 2.0
    assert isinstance(head.mlp[1], torch.nn.GELU)


def _ieee_float32_matmuls():
    """Pin CUDA fp32 matmuls to IEEE (TF32 would round the fp32 reference itself)."""
    torch.set_float32_matmul_precision("highest")  # conftest sets it back after the test


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
])
def test_last_layer_and_normalisation_compute_in_float32_under_autocast(device, dtype):
    """Under autocast the MLP follows the autocast dtype, but the logits are the float32 cosines
    of the MLP's output with the prototypes: the head's output equals a float32 computation on
    the (autocast) bottleneck to float32 rounding, with K = 65,536 prototypes as in ViT-S/16."""
    _ieee_float32_matmuls()
    torch.manual_seed(0)
    head = DINOHead(384, out_dim=65536, hidden_dim=2048, bottleneck_dim=256).to(device)
    x = torch.randn(16, 384, device=device)
    with torch.autocast(device, dtype=dtype):
        logits = head(x)
        bottleneck = head.mlp(x)
    assert bottleneck.dtype == dtype  # the MLP still runs in the autocast dtype
    assert logits.dtype == torch.float32
    z = F.normalize(bottleneck.double(), dim=-1)
    expected = z @ F.normalize(head.last_layer.weight_v.double(), dim=1).T  # float64 restatement
    error = (logits.double() - expected).abs().max().item()
    assert error < 2e-6  # float32 rounding of 256-term cosine sums (a bf16 output: ~2e-3, fp16: ~2.5e-4)
    # The same computation with the last layer left to autocast misses that bound by far.
    with torch.autocast(device, dtype=dtype):
        rounded = F.linear(z.float(), head.last_layer.weight)
    assert rounded.dtype == dtype and (rounded.double() - expected).abs().max().item() > 50 * error


def test_weight_norm_linear_output_is_float32_for_low_precision_inputs():
    """A bf16 input (e.g. from an MLP under autocast) is promoted, not the weight demoted."""
    torch.manual_seed(0)
    layer = WeightNormLinear(64, 1000)
    x = F.normalize(torch.randn(8, 64), dim=-1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    # float32 products of the bf16 input's exact values; only the order of the scaling differs
    torch.testing.assert_close(out, x.float() @ layer.weight.T, rtol=1e-6, atol=3e-7)


@pytest.mark.parametrize("fix_norm", [True, False])
def test_weight_norm_linear_scales_the_output_as_the_normalised_weight_would(fix_norm):
    """(x v^T) g / ||v|| and x (g v / ||v||)^T: the same output and gradients (v, g and x) to
    float32 rounding, checked against a float64 restatement of the latter."""
    torch.manual_seed(0)
    layer = WeightNormLinear(32, 500, fix_norm=fix_norm)
    with torch.no_grad():
        layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(6, 32, requires_grad=True)
    upstream = torch.randn(6, 500)
    (layer(x) * upstream).sum().backward()

    v64 = layer.weight_v.detach().double().requires_grad_()
    g64 = layer.weight_g.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out64 = x64 @ (g64 * v64 / v64.norm(dim=1, keepdim=True)).T
    (out64 * upstream.double()).sum().backward()
    torch.testing.assert_close(layer(x).double(), out64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight_v.grad.double(), v64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    if fix_norm:
        assert layer.weight_g.grad is None
    else:
        torch.testing.assert_close(layer.weight_g.grad.double(), g64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("learn_norm", [False, True])
def test_normalised_linear_backward_passes_gradcheck(learn_norm):
    """The hand-written backward of (x v^T) * g / ||v|| against finite differences (float64),
    for x, v and, when it is learned, g."""
    torch.manual_seed(1)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    v = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(11, 1, dtype=torch.float64) + 0.5).requires_grad_(learn_norm)
    assert torch.autograd.gradcheck(_NormalisedLinear.apply, (x, v, g))


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
])
def test_last_layer_backward_under_autocast_rounds_like_a_low_precision_matmul(device, dtype):
    """Under autocast the forward stays float32 (the same logits as without autocast) and the
    backward's products take operands of the autocast dtype: the gradients stay within that
    rounding of the float32 ones (bf16: 8 significant bits), and are not the float32 ones."""
    _ieee_float32_matmuls()
    torch.manual_seed(3)
    layer = WeightNormLinear(32, 4096).to(device)
    inputs = F.normalize(torch.randn(40, 32, device=device), dim=-1)
    upstream = torch.randn(40, 4096, device=device)
    grads, outputs = {}, {}
    for autocast in (False, True):
        layer.zero_grad(set_to_none=True)
        x = inputs.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            out = layer(x, dtype if autocast else None)
        (out * upstream).sum().backward()
        outputs[autocast] = out.detach()
        grads[autocast] = (layer.weight_v.grad.clone(), x.grad.clone())
    assert outputs[True].dtype == torch.float32
    torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=0)
    for low, full in zip(grads[True], grads[False]):
        relative = ((low - full).norm() / full.norm()).item()
        assert 1e-5 < relative < 1e-2  # bf16 operands: 8 significant bits, float32 sums


def test_head_hands_its_autocast_dtype_to_the_last_layers_backward():
    torch.manual_seed(4)
    head = DINOHead(48, out_dim=1024, hidden_dim=64, bottleneck_dim=32)
    features, upstream = torch.randn(24, 48), torch.randn(24, 1024)
    grads = []
    for backward_dtype in ("head", torch.bfloat16, None):
        head.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if backward_dtype == "head":
                out = head(features)
            else:
                bottleneck = F.normalize(head.mlp(features).float(), dim=-1)
                out = head.last_layer(bottleneck, backward_dtype)
        (out * upstream).sum().backward()
        grads.append(head.last_layer.weight_v.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert not torch.equal(grads[0], grads[2])


def test_fp16_backward_operands_stay_in_range_at_65536_prototypes():
    """fp16's largest value is 65,504. With K = 65,536 prototypes, ||v|| shrunk to 0.01 by weight
    decay (s = g / ||v|| = 100) and the gradient a DINO loss sends under fp16's initial loss scale
    (2^16 * (P_s - P_t) / (tau_s * B * pairs)), dy * s would overflow fp16; the backward keeps s
    out of its fp16 operands (as the reference's), so the gradients are finite and within fp16
    rounding of the float32 ones."""
    _ieee_float32_matmuls()
    torch.manual_seed(5)
    batch, dim, k, pairs, tau_s, loss_scale = 16, 256, 65536, 2, 0.1, 2.0 ** 16
    layer = WeightNormLinear(dim, k)
    with torch.no_grad():
        layer.weight_v.mul_(0.01 / layer.weight_v.norm(dim=1, keepdim=True))
    inputs = F.normalize(torch.randn(batch, dim), dim=-1)
    student = torch.softmax(torch.randn(batch, k), dim=-1)
    teacher = torch.softmax(torch.randn(batch, k) * 8, dim=-1)  # a peaked teacher: |P_s - P_t| near 1
    upstream = loss_scale * (student - teacher) / (tau_s * batch * pairs)
    scale = layer.weight_g.squeeze(1) / layer.weight_v.norm(dim=1)
    assert upstream.abs().max() < 65504 < (upstream * scale).abs().max()  # the folded operand would overflow
    grads = {}
    for dtype in (None, torch.float16):
        layer.zero_grad(set_to_none=True)
        x = inputs.clone().requires_grad_()
        (layer(x, dtype) * upstream).sum().backward()
        grads[dtype] = (layer.weight_v.grad.clone(), x.grad.clone())
    for low, full in zip(grads[torch.float16], grads[None]):
        assert torch.isfinite(low).all()
        assert ((low - full).norm() / full.norm()).item() < 1e-2  # fp16 operands: 11 significant bits
