"""dinossl.hub: ready backbones from a local path or a URL (downloads tested without network)."""

from __future__ import annotations

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
    loaded = hub.dino_vits16(path.as_uri(), cache_dir=cache)
    cached = cache / path.name
    assert cached.is_file() and _same(loaded, model)
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left
    cached.touch()
    stamp = cached.stat().st_mtime_ns
    assert _same(hub.dino_vits16(path.as_uri(), cache_dir=cache), model)
    assert cached.stat().st_mtime_ns == stamp  # reused, not fetched again


def test_default_cache_is_the_torch_hub_checkpoints_folder(vits16_file, tmp_path, monkeypatch):
    model, path = vits16_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = hub.RELEASED["dino_vits16"].url
    assert hub.cache_path(url) == tmp_path / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth"
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / path.name).write_bytes(path.read_bytes())
    # Already fetched (by this package or the reference's hubconf): no network needed.
    assert _same(hub.dino_vits16(), model)
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
