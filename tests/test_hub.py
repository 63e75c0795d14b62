"""dinossl.hub: ready backbones from a local path or a URL (downloads tested without network)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import pytest
import torch

from dinossl import hub
from dinossl.errors import CheckpointError
from dinossl.models import BackboneSpec, build_backbone, spec_of
from dinossl.weights import load_backbone




def random_backbone(spec: BackboneSpec) -> torch.nn.Module:
    """Random values without timm's slow initialisation."""
    with torch.device("meta"):
        model = build_backbone(spec)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.1, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def vits16_file(tmp_path_factory):
    """A ViT-S/16 backbone saved like the released file, under the released file name."""
    model = random_backbone(BackboneSpec("vit_small", 16, 224, 12))
    path = tmp_path_factory.mktemp("released") / "dino_deitsmall16_pretrain.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_released_names_and_urls_match_timm():
    assert set(hub.RELEASED) == {"dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50"}
    for name in hub.RELEASED:
        assert callable(getattr(hub, name))
    timm_models = pytest.importorskip("timm.models")
    for name, timm_name in [("dino_vits16", "vit_small_patch16_224.dino"), ("dino_vits8", "vit_small_patch8_224.dino"),
                            ("dino_vitb16", "vit_base_patch16_224.dino"), ("dino_vitb8", "vit_base_patch8_224.dino")]:
        assert hub.RELEASED[name].url == timm_models.get_pretrained_cfg(timm_name).url  # an independent record
        arch, patch = timm_name.split("_patch")[0], int(timm_name.split("_patch")[1].split("_")[0])
        assert hub.RELEASED[name].spec == BackboneSpec(arch, patch)
    assert hub.RELEASED["dino_resnet50"].url.endswith("/dino_resnet50_pretrain/dino_resnet50_pretrain.pth")


def test_local_path_gives_an_eval_backbone(vits16_file):
    model, path = vits16_file
    loaded = hub.dino_vits16(path)
    assert not loaded.training and spec_of(loaded) == BackboneSpec("vit_small", 16, 224, 12)
    assert _same(loaded, model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert loaded(x).shape == (1, 384) and torch.equal(loaded(x), model(x))


def test_file_of_another_release_is_refused(vits16_file):
    _, path = vits16_file
    with pytest.raises(CheckpointError, match=r"holds a vit_small/16 .* the model is a vit_small/8") as info:
        hub.dino_vits8(path)
    assert "patch_embed.proj.weight (384, 3, 16, 16) vs model (384, 3, 8, 8)" in str(info.value)


def test_url_is_downloaded_once_into_the_cache(vits16_file, tmp_path):
    model, path = vits16_file
    cache = tmp_path / "cache"
    url = path.as_uri()
    loaded = hub.dino_vits16(url, cache_dir=cache)
    cached = hub.cache_path(url, cache)
    assert cached.parent.parent == cache / "dinossl" and cached.name == path.name
    assert cached.is_file() and _same(loaded, model)
    assert sorted(p.name for p in cached.parent.iterdir()) == [path.name, path.name + ".sha256"]  # no temporary file
    assert cached.with_name(path.name + ".sha256").read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    stamp = cached.stat().st_mtime_ns
    assert _same(hub.dino_vits16(url, cache_dir=cache), model)
    assert cached.stat().st_mtime_ns == stamp  # reused, not fetched again


def test_two_urls_ending_in_the_same_file_name_never_share_an_entry(tmp_path):
    first, second = (random_backbone(BackboneSpec("vit_tiny", 16, 32, 2)) for _ in range(2))
    with torch.no_grad():
        second.cls_token.add_(1.0)
    urls = []
    for folder, model in (("a", first), ("b", second)):
        (tmp_path / folder).mkdir()
        torch.save(model.state_dict(), tmp_path / folder / "weights.pth")
        urls.append((tmp_path / folder / "weights.pth").as_uri())
    cache = tmp_path / "cache"
    assert hub.cache_path(urls[0], cache) != hub.cache_path(urls[1], cache)
    assert _same(hub.load(urls[0], cache_dir=cache), first)
    assert _same(hub.load(urls[1], cache_dir=cache), second)  # not the first URL's file
    assert _same(hub.load(urls[0], cache_dir=cache), first)


def test_a_cached_file_that_changed_is_downloaded_again(vits16_file, tmp_path, caplog):
    model, path = vits16_file
    cache = tmp_path / "cache"
    url = path.as_uri()
    cached = hub.fetch(url, cache)
    cached.write_bytes(cached.read_bytes()[:-1] + b"x")  # corrupted after the download
    with caplog.at_level("WARNING", logger="dinossl"):
        assert hub.fetch(url, cache) == cached
    assert "does not match the SHA-256 recorded" in caplog.text
    assert cached.read_bytes() == path.read_bytes() and _same(hub.load(url, cache_dir=cache), model)


def test_default_cache_is_the_torch_hub_checkpoints_folder(vits16_file, tmp_path, monkeypatch):
    model, path = vits16_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = hub.RELEASED["dino_vits16"].url
    assert hub.cache_path(url) == tmp_path / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth"
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / path.name).write_bytes(path.read_bytes())
    # Already fetched (by this package or the reference's hubconf): no network needed, and the
    # file's SHA-256 is recorded on first use, then checked on every reuse.
    assert _same(hub.dino_vits16(), model)
    record = tmp_path / "hub" / "checkpoints" / (path.name + ".sha256")
    assert record.read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _same(hub.load("dino_vits16"), model)
    assert _same(load_backbone("dino_vits16"), model)  # every loader takes released names and URLs
    assert _same(load_backbone(path.as_uri()), model)


def test_offline_download_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(hub.DownloadError) as info:
        hub.dino_vitb8(cache_dir=tmp_path)
    message = str(info.value)
    assert hub.RELEASED["dino_vitb8"].url in message and "name resolution" in message
    assert "without network access" in message and str(tmp_path / "dino_vitbase8_pretrain.pth") in message
    assert list(tmp_path.iterdir()) == []


def test_missing_local_file_and_missing_url_target(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        hub.dino_resnet50(tmp_path / "absent.pth")
    with pytest.raises(hub.DownloadError, match="cannot download file://"):
        hub.dino_resnet50((tmp_path / "absent.pth").as_uri(), cache_dir=tmp_path / "cache")


def test_resnet50_from_a_torchvision_file(tmp_path):
    model = random_backbone(BackboneSpec("resnet50"))
    torch.save(model.state_dict(), tmp_path / "dino_resnet50_pretrain.pth")
    loaded = hub.dino_resnet50(tmp_path / "dino_resnet50_pretrain.pth")
    assert _same(loaded, model) and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded(x).shape == (2, 2048) and torch.equal(loaded(x), model(x))


def test_builders_take_pretrained_and_backbone_kwargs(vits16_file):
    model, path = vits16_file
    fresh = hub.dino_vits16(pretrained=False, depth=2, drop_path_rate=0.2)
    assert spec_of(fresh) == BackboneSpec("vit_small", 16, 224, 2) and not fresh.training
    assert fresh.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)  # timm's linear rule, last block
    loaded = hub.dino_vits16(path, drop_path_rate=0.1)  # kwargs reach the backbone of loaded weights too
    assert _same(loaded, model) and loaded.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    classifier = hub.dino_vits16(path, num_classes=7)  # a new linear classifier on the [CLS] features
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert classifier(x).shape == (2, 7)
        assert torch.allclose(classifier(x), classifier.head(model(x)), atol=1e-6)
    resnet = hub.dino_resnet50(pretrained=False, num_classes=3)
    assert resnet(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_pretrained_cfg_gives_the_reference_evaluation_transform(cifar10_small):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from dinossl.data import evaluation_transform

    model = hub.dino_resnet50(pretrained=False)
    config = resolve_data_config(model=model)
    assert config == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                      "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
    image = Image.open(next((cifar10_small / "val").rglob("*.jpg"))).convert("RGB")
    ours = evaluation_transform(256, 224)(image)  # the reference's Resize(256, bicubic) + CenterCrop(224)
    assert torch.allclose(create_transform(**config)(image), ours, atol=1e-5)


def test_linear_classifier_reads_the_reference_head_layout(tmp_path, monkeypatch):
    """A head in the layout of the reference's *_linearweights.pth (DDP-wrapped keys, features
    interleaved as [cls_0, avg_0, cls_1, avg_1, ...] by eval_linear.py) gives the logits of the
    reference's own feature computation, restated here."""
    spec = BackboneSpec("vit_tiny", 16, 32, 2)
    backbone = random_backbone(spec)
    torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
    weight, bias = torch.randn(5, 2 * 192), torch.randn(5)
    torch.save({"epoch": 100, "best_acc": 78.2, "state_dict": {"module.linear.weight": weight,
                                                                "module.linear.bias": bias}}, tmp_path / "linear.pth")
    release = hub.Released(spec, (tmp_path / "backbone.pth").as_uri(), (tmp_path / "linear.pth").as_uri(), 1, True)
    monkeypatch.setitem(hub.RELEASED, "dino_vitb16", release)
    monkeypatch.setattr(hub, "IMAGENET_CLASSES", 5)
    probe = hub.dino_vitb16_lc(cache_dir=tmp_path / "cache")
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        last = backbone.intermediate_layers(x, 1)[-1]
        reference = torch.cat((last[:, 0].unsqueeze(-1), last[:, 1:].mean(dim=1).unsqueeze(-1)), dim=-1)
        expected = reference.reshape(3, -1) @ weight.T + bias
        assert torch.allclose(probe(x), expected, atol=1e-5)
    assert hub.dino_vitb16_lc(pretrained=False).linear.weight.shape == (5, 384)
