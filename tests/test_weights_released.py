"""The released backbone layout (DESIGN.md section 2) for ViT-S/16, ViT-S/8, ViT-B/16, ViT-B/8:
export writes exactly its keys and shapes, and the file loads back into an equal model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dinossl.models import BackboneSpec, build_backbone, spec_of
from dinossl.weights import load_backbone, released_state, write_backbone

WIDTH = {"vit_small": 384, "vit_base": 768}
DEPTH = 12


def released_shapes(d: int, p: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released DINO ViT file, written from DESIGN.md section 2."""
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + (224 // p) ** 2, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
            b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,),
        })
    shapes.update({"norm.weight": (d,), "norm.bias": (d,)})
    return shapes


def random_backbone(spec: BackboneSpec, seed: int = 0) -> torch.nn.Module:
    """A backbone with random values, without the (slow) timm initialisation."""
    with torch.device("meta"):
        model = build_backbone(spec)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0.0, 0.1, generator=generator)
    return model.eval()


# (arch, patch, format of the export): both formats are covered, each ViT-B size written once.
CASES = [("vit_small", 16, "pth"), ("vit_small", 8, "safetensors"),
         ("vit_base", 16, "safetensors"), ("vit_base", 8, "pth")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}{p}-{f}" for a, p, f in CASES])
def exported(request, tmp_path_factory):
    """(spec, source model, exported file): the model's state dict checked and ordered by
    ``released_state`` and written by ``write_backbone``, as ``dino export`` does."""
    arch, patch, fmt = request.param
    torch.set_num_threads(1)
    spec = BackboneSpec(arch, patch, 224, DEPTH)
    model = random_backbone(spec)
    path = tmp_path_factory.mktemp(f"{arch}{patch}") / f"backbone.{fmt}"
    write_backbone(released_state(model.state_dict()), path)
    return spec, model, path


def _read_raw(path):
    return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def test_export_has_exactly_the_released_keys_and_shapes(exported):
    spec, _, path = exported
    state = _read_raw(path)
    expected = released_shapes(WIDTH[spec.arch], spec.patch_size)
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert all(v.dtype == torch.float32 for v in state.values())


def test_export_loads_back_bit_for_bit_with_the_same_features(exported):
    spec, model, path = exported
    loaded = load_backbone(path)  # architecture inferred from the tensors
    assert spec_of(loaded) == spec
    assert not loaded.training
    original, state = model.state_dict(), loaded.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
