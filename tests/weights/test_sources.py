"""hf-hub: sources (timm-style and transformers repositories) and the transformers ViT layout,
with small files written in each layout and huggingface_hub's download replaced (no network)."""

from __future__ import annotations


import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors
from safetensors.torch import save_file

from dinossl import hub
from dinossl.cli import main
from dinossl.errors import CheckpointError
from dinossl.models import BackboneSpec, build_backbone, spec_of
from dinossl.weights import load_backbone
from dinossl.weights.sources import parse_hf_hub

SPEC = BackboneSpec("vit_tiny", 16, 32, 2)


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone(SPEC).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def transformers_layout(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A released-layout ViT state written as transformers' ViTModel names it (a plain
    restatement of transformers' naming; q, k, v are the thirds of qkv)."""
    out = {
        f"{prefix}embeddings.cls_token": state["cls_token"],
        f"{prefix}embeddings.position_embeddings": state["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": state["norm.weight"],
        f"{prefix}layernorm.bias": state["norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    names = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(depth):
        layer = f"{prefix}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for ours, theirs in names.items():
                out[f"{layer}{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"].clone()
            q, k, v = state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)
            for name, part in (("query", q), ("key", k), ("value", v)):
                out[f"{layer}attention.attention.{name}.{kind}"] = part.clone()
    return out


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert torch.equal(a.last_selfattention(x), b.last_selfattention(x))


@pytest.mark.parametrize("prefix", ["", "vit."])
def test_transformers_vit_is_converted_key_for_key(tiny_vit, tmp_path, prefix):
    state = transformers_layout(tiny_vit.state_dict(), prefix)
    state[f"{prefix}pooler.dense.weight"] = torch.zeros(192, 192)  # transformers' default pooler, not DINO's
    state[f"{prefix}pooler.dense.bias"] = torch.zeros(192)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    loaded = load_backbone(path)
    assert spec_of(loaded) == SPEC
    _same_outputs(loaded, tiny_vit)


def test_transformers_layout_errors_name_the_keys(tiny_vit, tmp_path):
    state = transformers_layout(tiny_vit.state_dict())
    with_classifier = {**state, "classifier.weight": torch.zeros(10, 192), "classifier.bias": torch.zeros(10)}
    save_file(with_classifier, tmp_path / "cls.safetensors")
    with pytest.raises(CheckpointError, match=r"does not have: classifier.bias, classifier.weight"):
        load_backbone(tmp_path / "cls.safetensors")
    no_key = {k: v for k, v in state.items() if k != "encoder.layer.1.attention.attention.key.bias"}
    save_file(no_key, tmp_path / "nokey.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder.layer.1 has no attention key bias"):
        load_backbone(tmp_path / "nokey.safetensors")
    no_norm = {k: v for k, v in state.items() if not k.startswith("layernorm.")}
    save_file(no_norm, tmp_path / "nonorm.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: norm.weight, norm.bias"):
        load_backbone(tmp_path / "nonorm.safetensors")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_vit):
    """huggingface_hub.hf_hub_download over two repositories written here: a timm one
    (model.safetensors, released layout) and a transformers one (pytorch_model.bin only)."""
    repos = {("timm/vit_tiny_patch16_32.dino", "model.safetensors"): tmp_path / "timm" / "model.safetensors",
             ("facebook/dino-vittiny16", "pytorch_model.bin"): tmp_path / "facebook" / "pytorch_model.bin"}
    for path in repos.values():
        path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, repos[("timm/vit_tiny_patch16_32.dino",
                                                                                  "model.safetensors")])
    torch.save(transformers_layout(tiny_vit.state_dict()), repos[("facebook/dino-vittiny16", "pytorch_model.bin")])
    calls = []

    def download(repo_id, filename, *, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        if repo_id == "offline/repo":
            raise hf_errors.LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")
        if not any(repo == repo_id for repo, _ in repos):
            missing = hf_errors.RepositoryNotFoundError.__new__(hf_errors.RepositoryNotFoundError)  # no HTTP response
            missing.args = (f"404 Client Error: Repository Not Found for {repo_id}",)
            raise missing
        if (repo_id, filename) not in repos:
            raise hf_errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(repos[(repo_id, filename)])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_hf_hub_timm_and_transformers_repositories(fake_hub, tiny_vit):
    _same_outputs(hub.load("hf-hub:timm/vit_tiny_patch16_32.dino"), tiny_vit)
    _same_outputs(load_backbone("hf-hub:facebook/dino-vittiny16@v1.0"), tiny_vit)
    assert fake_hub == [("timm/vit_tiny_patch16_32.dino", "model.safetensors", None),
                        ("facebook/dino-vittiny16", "model.safetensors", "v1.0"),
                        ("facebook/dino-vittiny16", "pytorch_model.bin", "v1.0")]
    # hf-hub: sources as pretrained= of the released builders (architecture checked strictly).
    with pytest.raises(CheckpointError, match="the file holds a vit_tiny/16"):
        hub.dino_vits16("hf-hub:timm/vit_tiny_patch16_32.dino")


def test_hf_hub_errors_are_one_line(fake_hub):
    for source, fragment in (("hf-hub:nobody/nothing", "no such repository"),
                             ("hf-hub:offline/repo", "without network access"),
                             ("hf-hub:just-a-name", "hf-hub:ORG/NAME")):
        with pytest.raises(CheckpointError, match=fragment) as info:
            load_backbone(source)
        assert "\n" not in str(info.value)
    assert parse_hf_hub("hf-hub:a/b@main") == ("a/b", "main")


def test_hf_hub_in_a_command(fake_hub, cifar10_small, tmp_path, capsys):
    out = tmp_path / "knn"
    args = ["eval", "knn", "hf-hub:facebook/dino-vittiny16", "--data", str(cifar10_small), "--resize", "32",
            "--crop", "32", "--num-workers", "0", "--k", "5", "--output", str(out)]
    assert main(args) == 0
    assert (out / "results.json").is_file()
    capsys.readouterr()
    assert main(["eval", "knn", "hf-hub:nobody/nothing", "--data", str(cifar10_small), "--output",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dino eval knn: error: hf-hub:nobody/nothing")
    assert not (tmp_path / "x").exists()
