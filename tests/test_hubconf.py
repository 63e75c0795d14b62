"""hubconf.py: torch.hub.load(repo_dir, name, source="local") builds every released model."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from dinossl import hub
from dinossl.models import BackboneSpec, LinearProbe, spec_of

REPO = Path(__file__).resolve().parents[1]
BACKBONES = {"dino_vits16": (BackboneSpec("vit_small", 16), 384), "dino_vits8": (BackboneSpec("vit_small", 8), 384),
             "dino_vitb16": (BackboneSpec("vit_base", 16), 768), "dino_vitb8": (BackboneSpec("vit_base", 8), 768),
             "dino_resnet50": (BackboneSpec("resnet50"), 2048)}


def test_entry_points_are_the_released_models_and_their_linear_classifiers():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dependencies == ["torch", "timm"]
    # torch.hub.list's rule (it takes no local folder): public callables of hubconf.py.
    names = {name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")}
    assert names == set(BACKBONES) | {f"{name}_lc" for name in BACKBONES} == set(hub.RELEASED) | {
        f"{name}_lc" for name in hub.RELEASED}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_entry_point_loads_without_weights(name):
    spec, dim = BACKBONES[name]
    model = torch.hub.load(str(REPO), name, source="local", pretrained=False, trust_repo=True)
    assert spec_of(model) == (spec if spec.arch == "resnet50" else dataclasses.replace(spec, depth=12))
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and model.pretrained_cfg["crop_pct"] == 0.875
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, dim)
    probe = torch.hub.load(str(REPO), f"{name}_lc", source="local", pretrained=False, trust_repo=True)
    release = hub.RELEASED[name]
    assert isinstance(probe, LinearProbe) and probe.linear.weight.shape == (
        1000, dim * (release.n_last_blocks + int(release.avgpool)))
    with torch.no_grad():
        assert probe(x).shape == (1, 1000)


def test_kwargs_reach_the_backbone():
    model = torch.hub.load(str(REPO), "dino_vits16", source="local", pretrained=False, trust_repo=True, depth=3,
                           drop_path_rate=0.3, num_classes=10)
    assert len(model.blocks) == 3 and model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
