"""Loading never runs code from a file: crafted pickles are refused, the reference's pickled
argparse.Namespace is read as inert data."""

from __future__ import annotations

import argparse
import builtins
import os
import pathlib
import subprocess

import pytest
import torch

from dinossl.cli import main
from dinossl.errors import CheckpointError
from dinossl.models import build_vit
from dinossl.weights import ForeignObject, load_backbone, read_network_weights, read_weights_file


@pytest.fixture(scope="module")
def backbone_state():
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=8, img_size=32, depth=2).state_dict()


class RunsShell:
    """Unpickling this calls os.system (module ``posix`` on Linux)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsSubprocess(RunsShell):
    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


class RunsExec(RunsShell):
    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class PosesAsNamespace(RunsShell):
    """Pickled as a call of argparse.Namespace with arbitrary arguments."""

    def __reduce__(self):
        return argparse.Namespace, (f"touch {self.marker}",)


@pytest.fixture
def spies(monkeypatch):
    """``arm()`` (called once the crafted file is written) replaces os.system and subprocess
    by recorders; the list holds the names of any calls made after that."""
    calls: list[str] = []

    def arm() -> list[str]:
        for owner, name in ((os, "system"), (subprocess, "call"), (subprocess, "Popen")):
            monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: calls.append(_n))
        return calls

    return arm


@pytest.mark.parametrize("payload", [RunsShell, RunsSubprocess, RunsExec], ids=["os.system", "subprocess", "exec"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, backbone_state, spies, payload, legacy):
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.pth"
    crafted = {"teacher": {f"backbone.{k}": v for k, v in backbone_state.items()}, "args": payload(marker)}
    function = payload(marker).__reduce__()[0].__name__  # system, call, exec
    torch.save(crafted, path, _use_new_zipfile_serialization=not legacy)
    calls = spies()
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        load_backbone(path)
    message = str(info.value)
    assert "\n" not in message and "could run code" in message
    assert "weights_only=False" not in message  # never advise the unsafe way
    if not legacy:  # the zip format is scanned: the offending global is named
        assert f".{function}" in message
    assert not marker.exists() and calls == []


def test_crafted_checkpoint_via_cli_is_one_error_line(tmp_path, backbone_state, spies, capsys):
    marker = tmp_path / "code-ran"
    torch.save({**backbone_state, "x": RunsShell(marker)}, tmp_path / "crafted.pth")
    calls = spies()
    assert main(["export", str(tmp_path / "crafted.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dino export: error:") and "refused to unpickle" in err and len(err.splitlines()) == 1
    assert not marker.exists() and calls == [] and not (tmp_path / "crafted_teacher_backbone.pth").exists()


def test_reference_args_namespace_is_read_as_inert_data(tmp_path, backbone_state):
    args = argparse.Namespace(arch="vit_tiny", patch_size=8, lr=5e-4, output_dir=pathlib.Path("/runs/dino"),
                              local_crops_scale=(0.05, 0.4))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone_state.items()}, "args": args, "epoch": 3},
               tmp_path / "full.pth")
    raw = read_weights_file(tmp_path / "full.pth")
    assert isinstance(raw["args"], ForeignObject) and not isinstance(raw["args"], argparse.Namespace)
    fields = raw["args"].fields()
    assert fields["arch"] == "vit_tiny" and fields["lr"] == 5e-4 and fields["local_crops_scale"] == (0.05, 0.4)
    assert isinstance(fields["output_dir"], ForeignObject)  # a pathlib path, also never constructed
    assert read_network_weights(tmp_path / "full.pth").settings["patch_size"] == 8
    model = load_backbone(tmp_path / "full.pth")
    assert torch.equal(model.cls_token, backbone_state["cls_token"])


def test_a_call_posing_as_namespace_stays_inert(tmp_path, backbone_state, spies):
    marker = tmp_path / "code-ran"
    torch.save({**backbone_state, "args": PosesAsNamespace(marker)}, tmp_path / "posing.pth")
    calls = spies()
    raw = read_weights_file(tmp_path / "posing.pth")
    assert isinstance(raw["args"], ForeignObject) and raw["args"].args == (f"touch {marker}",)
    assert not marker.exists() and calls == []


def test_torch_weights_only_refuses_the_namespace_file(tmp_path, backbone_state):
    """Why the stand-in exists: plain weights_only loading rejects the reference's checkpoints."""
    torch.save({"teacher": backbone_state, "args": argparse.Namespace(arch="vit_tiny")}, tmp_path / "full.pth")
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(tmp_path / "full.pth", weights_only=True)


def test_training_checkpoints_are_read_by_the_same_safe_reader(tmp_path, backbone_state, spies):
    """read_checkpoint (the trainer's resume) shares the refusal and the inert Namespace."""
    from dinossl.train.checkpoint import read_checkpoint

    torch.save({"teacher": backbone_state, "args": argparse.Namespace(arch="vit_tiny"), "epoch": 3},
               tmp_path / "reference.pth")
    checkpoint = read_checkpoint(tmp_path / "reference.pth")
    assert type(checkpoint) is dict and checkpoint["epoch"] == 3
    assert isinstance(checkpoint["args"], ForeignObject) and checkpoint["args"].fields() == {"arch": "vit_tiny"}

    marker = tmp_path / "code-ran"
    torch.save({"teacher": backbone_state, "args": RunsShell(marker)}, tmp_path / "crafted.pth")
    calls = spies()
    with pytest.raises(CheckpointError) as from_checkpoint:
        read_checkpoint(tmp_path / "crafted.pth")
    with pytest.raises(CheckpointError) as from_weights:
        read_weights_file(tmp_path / "crafted.pth")
    assert str(from_checkpoint.value) == str(from_weights.value) and "refused to unpickle" in str(from_weights.value)
    assert not marker.exists() and calls == []


def test_a_refused_pickle_fetched_by_url_is_not_kept_in_the_download_cache(tmp_path, backbone_state, spies):
    from dinossl.weights.registry import cache_path, fetch

    crafted = tmp_path / "served" / "crafted.pth"
    crafted.parent.mkdir()
    torch.save({**backbone_state, "x": RunsShell(tmp_path / "ran")}, crafted)
    calls = spies()
    url = crafted.as_uri()  # file:// stands for a server: no network needed
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="could run code.*not kept in the download cache"):
        fetch(url, cache)
    assert not cache_path(url, cache).exists() and not list(cache.glob(".*")) and calls == []
    assert not (tmp_path / "ran").exists()
