"""End-to-end behaviour of the trainer on a tiny model and 64 images (seconds per test)."""

import json

import pytest
import torch

from dinossl.config import load_config
from dinossl.errors import CheckpointError, DataError, DinoError
from dinossl.train import NonFiniteLoss, train
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES


def tiny_config(folder, *extra):
    return load_config("vit-tiny-cifar", overrides=TINY_OVERRIDES + [f"data.path={folder}", *extra])


def _state(run_dir):
    return read_checkpoint(run_dir / "checkpoint.pth")


def _assert_same_state(a, b):
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=0, atol=0)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name in sa[key]:
            torch.testing.assert_close(sa[key][name], sb[key][name], rtol=0, atol=0)
    assert a["epoch"] == b["epoch"]


@pytest.mark.parametrize("geometric", ["per_image", "batched", "device"])
def test_resume_ends_in_the_same_state_as_an_uninterrupted_run(tmp_path, tiny_image_folder, geometric):
    extra = ["train.epochs=3", "optim.freeze_last_layer=1", "loss.warmup_teacher_temp_epochs=2",
             "loss.teacher_temp=0.06", f"data.geometric={geometric}"]
    full = tmp_path / "full"
    train(tiny_config(tiny_image_folder, *extra), full)
    split = tmp_path / "split"
    # "stop" after epoch 1: same config but only the first epoch runs, then resume to the end.
    run = train(tiny_config(tiny_image_folder, *extra), split, stop_after_epochs=1)
    assert run.epochs_done == 1 and _state(split)["epoch"] == 1
    train(tiny_config(tiny_image_folder, *extra), split)
    _assert_same_state(_state(full), _state(split))
    records = [json.loads(l) for l in (split / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_outputs_log_fields_and_released_layout_export(tiny_run):
    records = [json.loads(l) for l in (tiny_run / "log.jsonl").read_text().splitlines()]
    step = next(r for r in records if r["kind"] == "step")
    for field in ("loss", "lr", "weight_decay", "teacher_temp", "momentum", "images_per_s", "teacher_entropy",
                  "kl", "center_norm"):
        assert field in step
    assert any(r["kind"] == "epoch" for r in records)
    assert list((tiny_run / "tensorboard").iterdir())
    exported = torch.load(tiny_run / "teacher_backbone.pth", weights_only=True)
    checkpoint = _state(tiny_run)
    teacher = {k[len("backbone."):]: v for k, v in checkpoint["teacher"].items() if k.startswith("backbone.")}
    assert exported.keys() == teacher.keys()
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= exported.keys()
    from safetensors.torch import load_file

    safe = load_file(str(tiny_run / "teacher_backbone.safetensors"))
    assert all(torch.equal(safe[k], exported[k]) for k in exported)
    assert checkpoint["dino_loss"]["center"].shape == (1, 256)


def test_last_layer_frozen_during_first_epoch(tmp_path, tiny_image_folder):
    torch.manual_seed(0)
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder, "optim.freeze_last_layer=1"), out)
    frozen = _state(out)["student"]
    from dinossl.models import build_network

    torch.manual_seed(0)  # the trainer builds the student right after seeding with train.seed=0
    initial = build_network(tiny_config(tiny_image_folder).model, student=True).state_dict()
    assert torch.equal(frozen["head.last_layer.weight_v"], initial["head.last_layer.weight_v"])
    assert not torch.equal(frozen["head.mlp.0.weight"], initial["head.mlp.0.weight"])
    out2 = tmp_path / "run2"
    train(tiny_config(tiny_image_folder, "optim.freeze_last_layer=0"), out2)
    assert not torch.equal(_state(out2)["student"]["head.last_layer.weight_v"], initial["head.last_layer.weight_v"])


def test_output_folder_of_another_run_is_refused_and_untouched(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(DinoError) as info:
        train(tiny_config(tiny_image_folder, "model.depth=3"), out)
    assert "model.depth" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_checkpoint_of_other_run_without_config_file_is_refused(tmp_path, tiny_image_folder, tiny_run):
    out = tmp_path / "other"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes((tiny_run / "checkpoint.pth").read_bytes())
    with pytest.raises(CheckpointError) as info:
        train(tiny_config(tiny_image_folder, "model.out_dim=128"), out)
    assert "model.out_dim" in str(info.value)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_image_folder, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder, "train.epochs=2"), out, stop_after_epochs=1)
    good = (out / "checkpoint.pth").read_bytes()
    from dinossl.objective import loss as loss_module

    original = loss_module.DINOLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss, stats = original(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), stats

    monkeypatch.setattr(loss_module.DINOLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLoss) as info:
        train(tiny_config(tiny_image_folder, "train.epochs=2"), out)
    steps_per_epoch = 64 // 16
    assert f"step {steps_per_epoch + 2}" in str(info.value)
    assert (out / "checkpoint.pth").read_bytes() == good


def test_too_few_images_for_a_batch(tmp_path, tiny_image_folder):
    with pytest.raises(DataError):
        train(tiny_config(tiny_image_folder, "train.batch_size_per_process=100"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_teacher_keeps_its_own_batchnorm_statistics(tmp_path, tiny_image_folder):
    """The teacher runs in training mode: its BN layers use batch statistics and update their own
    running averages from its own forward passes; the EMA never copies the student's buffers."""
    out = tmp_path / "bn"
    train(tiny_config(tiny_image_folder, "model.use_bn_in_head=true"), out)
    state = _state(out)
    for name in ("head.mlp.1.running_mean", "head.mlp.4.running_var"):
        teacher, student = state["teacher"][name], state["student"][name]
        initial = torch.zeros_like(teacher) if "mean" in name else torch.ones_like(teacher)
        assert not torch.allclose(teacher, initial)  # updated by the teacher's own forwards
        assert not torch.allclose(teacher, student)  # not copied from the student
    assert state["teacher"]["head.mlp.1.num_batches_tracked"] == 4  # one teacher forward per step


def test_batched_crops_count_unreadable_images_in_the_log(tmp_path, tiny_image_folder):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(tiny_image_folder, folder)
    next(folder.glob("*/*.png")).write_bytes(b"not an image")
    train(tiny_config(folder, "data.geometric=batched"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    warnings = [r for r in records if r["kind"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["skipped_images"] == 1 and "unreadable" in warnings[0]["message"]


def test_warmup_longer_than_training_is_logged(tmp_path, tiny_image_folder):
    from dinossl.train import build_run

    run = build_run(tiny_config(tiny_image_folder, "optim.warmup_epochs=3"), tmp_path / "run")
    run.run_log.close()
    steps = run.steps_per_epoch
    base = run.config.optim.base_lr * run.global_batch / 256
    assert run.schedules.lr[-1] == pytest.approx(base * (steps - 1) / (3 * steps - 1))  # on the 3-epoch ramp, cut
    warnings = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "warning" and "optim.warmup_epochs=3" in r["message"] for r in warnings)


def test_checkpoint_with_the_older_last_layer_order_resumes_exactly(tmp_path, tiny_image_folder, monkeypatch):
    """A run whose first epoch was written by the older code (weight_v registered before weight_g,
    so its optimiser state lists them the other way round) resumes to the state of an
    uninterrupted run."""
    from dinossl.models.head import WeightNormLinear

    extra = ["train.epochs=2", "model.norm_last_layer=false", "optim.freeze_last_layer=0"]
    full = tmp_path / "full"
    train(tiny_config(tiny_image_folder, *extra), full)

    original_init = WeightNormLinear.__init__

    def older_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._parameters["weight_g"] = self._parameters.pop("weight_g")  # v first, then g

    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        patch.setattr(WeightNormLinear, "__init__", older_init)
        train(tiny_config(tiny_image_folder, *extra), split, stop_after_epochs=1)
    keys = list(_state(split)["student"])
    assert keys.index("head.last_layer.weight_v") < keys.index("head.last_layer.weight_g")
    train(tiny_config(tiny_image_folder, *extra), split)
    _assert_same_state(_state(full), _state(split))
