"""`dino train --init-from WEIGHTS` and `dino export CHECKPOINT`, end to end through the CLI."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import load_file

from dinossl.cli import main
from dinossl.config import load_config
from dinossl.models import build_vit
from dinossl.train.trainer import build_run
from dinossl.weights import load_backbone, write_backbone
from tests.conftest import TINY_OVERRIDES




def tiny_backbone(seed: int, patch_size: int = 8) -> torch.nn.Module:
    """The backbone of the vit-tiny-cifar preset with TINY_OVERRIDES (ViT-tiny/8, 2 blocks, 32 px)."""
    torch.manual_seed(seed)
    return build_vit("vit_tiny", patch_size=patch_size, img_size=32, depth=2).eval()


@pytest.fixture(scope="module")
def one_batch_folder(tmp_path_factory):
    """16 sample images (one batch of TINY_OVERRIDES: one step per epoch)."""
    from dinossl.data.sample import load_sample

    sample = load_sample("train")
    root = tmp_path_factory.mktemp("images")
    for index in range(16):
        image, label = sample.load(index * 131 % len(sample))
        (root / sample.classes[label]).mkdir(exist_ok=True)
        image.save(root / sample.classes[label] / f"{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory):
    """Released-layout weights (a backbone-only .pth) to start from."""
    path = tmp_path_factory.mktemp("init") / "released.pth"
    write_backbone(tiny_backbone(seed=123).state_dict(), path)
    return path


def _train_args(out, folder, *extra):
    return ["train", "--preset", "vit-tiny-cifar", "--output", str(out), *TINY_OVERRIDES, f"data.path={folder}", *extra]


@pytest.fixture(scope="module")
def init_run(tmp_path_factory, one_batch_folder, init_weights):
    """A one-step run started with `dino train --init-from`; (run folder, stderr)."""
    out = tmp_path_factory.mktemp("run") / "run"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    err = io.StringIO()
    capture.setattr(sys, "stderr", err)
    try:
        status = main(_train_args(out, one_batch_folder, "--init-from", str(init_weights)))
    finally:
        capture.undo()
    assert status == 0, err.getvalue()
    return out, err.getvalue()


def _equal_states(a: dict, b: dict) -> bool:
    """Same keys (safetensors files keep no key order) and bitwise equal tensors."""
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _backbone_of(network_state: dict) -> dict:
    return {k[len("backbone."):]: v for k, v in network_state.items() if k.startswith("backbone.")}


def test_init_from_loads_student_and_teacher_with_a_fresh_head(tmp_path, one_batch_folder, init_weights):
    config = load_config("vit-tiny-cifar", overrides=TINY_OVERRIDES + [f"data.path={one_batch_folder}"])
    started = build_run(config, tmp_path / "a", init_from=str(init_weights))
    plain = build_run(config, tmp_path / "b")
    expected = torch.load(init_weights, weights_only=True)
    assert _equal_states(started.distiller.student.backbone.state_dict(), expected)
    assert _equal_states(started.distiller.teacher.backbone.state_dict(), expected)
    assert not _equal_states(plain.distiller.student.backbone.state_dict(), expected)
    assert _equal_states(started.distiller.student.head.state_dict(), plain.distiller.student.head.state_dict())  # untouched head


def test_init_from_trains_from_the_weights(init_run, init_weights):
    out, err = init_run
    assert f"initialised from {init_weights}" in err
    start = torch.load(init_weights, weights_only=True)
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    student, teacher = _backbone_of(checkpoint["student"]), load_file(str(out / "teacher_backbone.safetensors"))
    random_init = tiny_backbone(seed=0).state_dict()

    def distance(a: dict, b: dict) -> float:
        return max((a[k] - b[k]).abs().max().item() for k in b)

    apart = distance(random_init, start)
    assert 0 < distance(student, start) < apart / 10  # one optimiser step away from the initial weights
    assert distance(teacher, start) < apart / 10


def test_init_from_another_architecture_is_one_error_line(tmp_path, capsys, one_batch_folder):
    weights = tmp_path / "p16.pth"
    write_backbone(tiny_backbone(seed=1, patch_size=16).state_dict(), weights)
    status = main(_train_args(tmp_path / "out", one_batch_folder, "--init-from", str(weights)))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("dino train: error:")
    assert "model.patch_size=16" in err[0]
    assert "patch_embed.proj.weight (192, 3, 16, 16) vs model (192, 3, 8, 8)" in err[0]


def _export(capsys, *argv):
    status = main(["export", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out.strip(), captured.err.strip().splitlines()


def test_export_teacher_matches_the_trainers_export(init_run, capsys):
    out, _ = init_run
    status, stdout, _ = _export(capsys, out / "checkpoint.pth")
    target = out / "checkpoint_teacher_backbone.pth"
    assert status == 0 and str(target) in stdout
    exported = torch.load(target, weights_only=True)
    assert _equal_states(exported, load_file(str(out / "teacher_backbone.safetensors")))
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert _equal_states(exported, _backbone_of(checkpoint["teacher"]))


def test_export_student_as_safetensors_round_trips(init_run, capsys, tmp_path):
    out, _ = init_run
    target = tmp_path / "exports" / "checkpoint_student_backbone.safetensors"
    status, _, _ = _export(capsys, out / "checkpoint.pth", "--which", "student", "--format", "safetensors",
                           "--output", target.parent)
    assert status == 0
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    student = _backbone_of(checkpoint["student"])
    assert _equal_states(load_file(str(target)), student)
    assert not _equal_states(student, _backbone_of(checkpoint["teacher"]))
    loaded, direct = load_backbone(target), load_backbone(out / "checkpoint.pth", which="student")
    assert _equal_states(loaded.state_dict(), direct.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), direct(x))


def test_export_converts_a_released_file_bit_for_bit(init_weights, capsys, tmp_path):
    target = tmp_path / f"{init_weights.stem}_teacher_backbone.safetensors"
    assert _export(capsys, init_weights, "--format", "safetensors", "--output", tmp_path)[0] == 0
    assert _equal_states(load_file(str(target)), torch.load(init_weights, weights_only=True))


def test_export_reference_checkpoint_with_args(tmp_path, capsys):
    state = tiny_backbone(seed=2).state_dict()
    torch.save({"student": {f"module.backbone.{k}": v + 1 for k, v in state.items()},
                "teacher": {f"backbone.{k}": v for k, v in state.items()},
                "args": argparse.Namespace(arch="vit_tiny", patch_size=8), "epoch": 10}, tmp_path / "checkpoint.pth")
    status, _, _ = _export(capsys, tmp_path / "checkpoint.pth", "--student")
    assert status == 0
    exported = torch.load(tmp_path / "checkpoint_student_backbone.pth", weights_only=True)
    assert _equal_states(exported, {k: v + 1 for k, v in state.items()})


def test_export_never_overwrites_without_overwrite(init_weights, capsys, tmp_path):
    target = tmp_path / f"{init_weights.stem}_teacher_backbone.pth"
    target.write_bytes(b"keep me")
    status, _, err = _export(capsys, init_weights, "--output", tmp_path)
    assert status == 2 and len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert target.read_bytes() == b"keep me"
    assert _export(capsys, init_weights, "--output", tmp_path, "--overwrite")[0] == 0
    assert _equal_states(torch.load(target, weights_only=True), torch.load(init_weights, weights_only=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left


def test_export_of_a_released_name_checks_the_output_before_any_download(tmp_path, capsys, monkeypatch):
    import urllib.request

    def no_download(*args, **kwargs):
        raise AssertionError("weights were fetched before the output was checked")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, _, err = _export(capsys, "dino_vits16", "--output", blocker)
    assert status == 2 and len(err) == 1 and "is a file" in err[0]


@pytest.mark.parametrize("case,needle", [
    ("absent", "does not exist"),
    ("text", "not a PyTorch"),
    ("student-of-backbone", "'student' entry"),
    ("not-a-backbone", "cannot tell the architecture"),
])
def test_export_bad_input_is_one_error_line(init_weights, capsys, tmp_path, case, needle):
    (tmp_path / "notes.pth").write_text("hello")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    argv = {
        "absent": [tmp_path / "absent.pth"],
        "text": [tmp_path / "notes.pth"],
        "student-of-backbone": [init_weights, "--which", "student", "--output", tmp_path / "x"],
        "not-a-backbone": [tmp_path / "other.pth"],
    }[case]
    status, stdout, err = _export(capsys, *argv)
    assert status == 2 and stdout == ""
    assert len(err) == 1 and err[0].startswith("dino export: error:") and needle in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_formats_are_the_library_formats():
    from dinossl.cli import export
    from dinossl.weights import FORMATS

    assert export.ALL_FORMATS == (*FORMATS, "onnx")


def test_output_ending_in_the_format_is_the_file(init_weights, capsys, tmp_path):
    target = tmp_path / "exp.safetensors"
    status, stdout, _ = _export(capsys, init_weights, "--format", "safetensors", "--output", target)
    assert status == 0 and target.is_file() and str(target) in stdout
    assert _equal_states(load_file(str(target)), torch.load(init_weights, weights_only=True))
    # the extension alone picks the format; a folder-like name stays a folder
    assert _export(capsys, init_weights, "--output", tmp_path / "b.pth")[0] == 0
    assert _equal_states(torch.load(tmp_path / "b.pth", weights_only=True), torch.load(init_weights, weights_only=True))
    assert _export(capsys, init_weights, "--output", tmp_path / "folder")[0] == 0
    assert (tmp_path / "folder" / f"{init_weights.stem}_teacher_backbone.pth").is_file()


def test_output_of_another_format_is_one_error_line(init_weights, capsys, tmp_path):
    status, stdout, err = _export(capsys, init_weights, "--format", "pth", "--output", tmp_path / "x.safetensors")
    assert status == 2 and stdout == "" and len(err) == 1 and "--format is pth" in err[0]
    assert not list(tmp_path.iterdir())
