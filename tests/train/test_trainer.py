"""End-to-end behaviour of the trainer on a tiny model and 64 images (seconds per test)."""

import json
import math

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


@pytest.mark.parametrize("ending", ["success", "bad_data", "nonfinite_loss", "interrupt"])
def test_the_process_group_is_destroyed_on_every_exit(tmp_path, tiny_image_folder, monkeypatch, ending):
    """train() destroys a process group it created however it ends (a one-process gloo group
    stands in for the one torchrun would make)."""
    from torch import distributed as dist

    from dinossl.objective import loss as loss_module
    from dinossl.runtime.distributed import DistContext
    from dinossl.train import trainer

    def joined(device, timeout_s):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        return DistContext(0, 1, 0, torch.device("cpu"), owns_process_group=True)

    monkeypatch.setattr(trainer, "init_distributed", joined)
    extra = ["train.batch_size_per_process=100"] if ending == "bad_data" else []
    original = loss_module.DINOLoss.forward

    def failing(self, *args, **kwargs):
        if ending == "interrupt":
            raise KeyboardInterrupt
        loss, stats = original(self, *args, **kwargs)
        return loss * float("nan"), stats

    if ending in ("nonfinite_loss", "interrupt"):
        monkeypatch.setattr(loss_module.DINOLoss, "forward", failing)
    expected = {"success": None, "bad_data": DataError, "nonfinite_loss": NonFiniteLoss,
                "interrupt": KeyboardInterrupt}[ending]
    try:
        if expected is None:
            train(tiny_config(tiny_image_folder, *extra), tmp_path / "run")
        else:
            with pytest.raises(expected):
                train(tiny_config(tiny_image_folder, *extra), tmp_path / "run")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("precision, tf32, expected", [("fp32", "true", True), ("fp32", "false", False),
                                                      ("bf16", "true", False)])
def test_tf32_applies_to_fp32_runs_only(tmp_path, tiny_image_folder, monkeypatch, precision, tf32, expected):
    """train.tf32 reaches the device switches for fp32 runs; a mixed-precision run keeps its
    float32 parts (the head's last layer, the loss) in IEEE float32."""
    from dinossl.runtime import process_settings
    from dinossl.train import build_run

    calls = []
    monkeypatch.setattr(process_settings, "configure_cuda", lambda device, tf32: calls.append((device, tf32)))
    run = build_run(tiny_config(tiny_image_folder, f"train.precision={precision}", f"train.tf32={tf32}",
                                "train.device=cpu"), tmp_path / "run")
    run.run_log.close()
    assert calls == [(torch.device("cpu"), expected)]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_a_tiny_run_trains_and_resumes_on_cuda(tmp_path, tiny_image_folder, precision):
    """The CUDA paths end to end: crops cut on the GPU, autocast (bf16 on sm80+, else fp16 with
    its scaler), TF32 for fp32, checkpoint, resume, export."""
    out = tmp_path / "run"
    config = tiny_config(tiny_image_folder, "train.device=cuda", f"train.precision={precision}", "train.epochs=2",
                         "train.log_every=1")
    train(config, out, stop_after_epochs=1)
    first = _state(out)
    result = train(config, out)
    state = _state(out)
    assert first["epoch"] == 1 and state["epoch"] == 2 and result.exported
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())
    fp16 = precision == "fp16" or (precision == "auto" and torch.cuda.get_device_capability()[0] < 8)
    assert (state["fp16_scaler"] is not None) == fp16
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)


def _comparable_records(run_dir):
    rows = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def test_per_image_crops_are_bit_exact_across_worker_counts_and_a_resume(tmp_path, tiny_image_folder):
    """The DataLoader's base seed no longer comes from the global RNG the drop-path draws use:
    0, 1 and 2 workers, and a run resumed with persistent workers, end identical."""
    extra = ["train.epochs=2", "data.geometric=per_image", "model.drop_path=0.1"]
    runs = {}
    for workers in (0, 1, 2):
        runs[workers] = tmp_path / f"workers{workers}"
        train(tiny_config(tiny_image_folder, *extra, f"data.num_workers={workers}"), runs[workers])
    for workers in (1, 2):
        _assert_same_state(_state(runs[0]), _state(runs[workers]))
    split = tmp_path / "split"
    train(tiny_config(tiny_image_folder, *extra, "data.num_workers=1"), split, stop_after_epochs=1)
    train(tiny_config(tiny_image_folder, *extra, "data.num_workers=1"), split)
    _assert_same_state(_state(runs[0]), _state(split))


@pytest.mark.parametrize("geometric", ["per_image", "batched"])
def test_sigterm_inside_an_epoch_checkpoints_that_step_and_resume_is_bit_exact(tmp_path, tiny_image_folder,
                                                                               monkeypatch, geometric):
    import signal

    from dinossl.objective import loss as loss_module

    extra = ["train.epochs=2", "train.log_every=3", f"data.geometric={geometric}", "data.photometric=device"]
    full = tmp_path / "full"
    train(tiny_config(tiny_image_folder, *extra), full)

    original = loss_module.DINOLoss.forward
    calls = {"n": 0}

    def signalled(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # inside epoch 2 (4 steps per epoch), between two log records
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loss_module.DINOLoss, "forward", signalled)
    split = tmp_path / "split"
    result = train(tiny_config(tiny_image_folder, *extra), split)
    assert (result.preempted_by, result.steps_done, result.epochs_done) == (signal.SIGTERM, 6, 1)
    stopped = _state(split)
    assert (stopped["epoch"], stopped["epoch_step"], stopped["step"]) == (1, 2, 6)
    assert not (split / "teacher_backbone.pth").exists()
    monkeypatch.setattr(loss_module.DINOLoss, "forward", original)
    train(tiny_config(tiny_image_folder, *extra), split)
    _assert_same_state(_state(full), _state(split))
    assert _comparable_records(split) == _comparable_records(full)


def test_checkpoint_every_steps_writes_inside_epochs(tmp_path, tiny_image_folder, monkeypatch):
    from dinossl.train import trainer

    written = []
    original = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint",
                        lambda state, path: (written.append((state["step"], state.get("epoch_step", 0))),
                                             original(state, path)))
    train(tiny_config(tiny_image_folder, "train.epochs=2", "train.checkpoint_every_steps=3"), tmp_path / "run")
    assert written == [(3, 3), (4, 0), (6, 2), (8, 0)]


def test_nonfinite_loss_before_any_checkpoint_says_so(tmp_path, tiny_image_folder, monkeypatch):
    from dinossl.objective import loss as loss_module

    original = loss_module.DINOLoss.forward
    monkeypatch.setattr(loss_module.DINOLoss, "forward",
                        lambda self, *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(original(self, *a, **k)))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as info:
        train(tiny_config(tiny_image_folder), out)
    assert "no checkpoint had been written" in str(info.value) and "untouched" not in str(info.value)
    assert not (out / "checkpoint.pth").exists()


def test_checkpoint_has_a_checked_sha256_and_config_permissions(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder, "train.epochs=2"), out, stop_after_epochs=1)
    mode = (out / "config.yaml").stat().st_mode & 0o777
    assert (out / "checkpoint.pth").stat().st_mode & 0o777 == mode
    assert (out / "checkpoint.pth.sha256").stat().st_mode & 0o777 == mode
    data = bytearray((out / "checkpoint.pth").read_bytes())
    data[-100] ^= 0xFF  # damaged on disk after it was written
    (out / "checkpoint.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        train(tiny_config(tiny_image_folder, "train.epochs=2"), out)


def test_resume_removes_interrupted_writes_and_repeats_no_log_record(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder, "train.epochs=2"), out, stop_after_epochs=1)
    kept = (out / "log.jsonl").read_text()
    with (out / "log.jsonl").open("a") as handle:  # what a run killed inside epoch 2 had logged
        handle.write(json.dumps({"kind": "step", "step": 5, "epoch": 2, "loss": 1.0}) + "\n")
        handle.write(json.dumps({"kind": "knn", "epoch": 1, "top1": 0.5}) + "\n")
        handle.write('{"kind": "step", "st')
    (out / ".checkpoint.pth.x1y2.tmp").write_bytes(b"PK\x03\x04 part of a checkpoint")
    (out / ".teacher_backbone.pth.x1y2.tmp").write_bytes(b"PK\x03\x04 part of an export")
    train(tiny_config(tiny_image_folder, "train.epochs=2"), out)
    assert not list(out.glob(".*.tmp"))
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and (out / "log.jsonl").read_text().startswith(kept)
    assert [r["kind"] for r in rows].count("knn") == 1


ABLATIONS = {
    "previous-epoch-teacher": ["optim.teacher_update=previous_epoch"],
    "predictor-sinkhorn-mse-no-sharpening": ["model.predictor=true", "loss.centering=sinkhorn", "loss.criterion=mse",
                                             "loss.sharpening=false"],
}


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_ablations_resume_to_the_state_of_an_uninterrupted_run(tmp_path, tiny_image_folder, ablation):
    extra = ["train.epochs=2", *ABLATIONS[ablation]]
    full = tmp_path / "full"
    train(tiny_config(tiny_image_folder, *extra), full)
    split = tmp_path / "split"
    train(tiny_config(tiny_image_folder, *extra), split, stop_after_epochs=1)
    first = _state(split)
    train(tiny_config(tiny_image_folder, *extra), split)
    last = _state(split)
    _assert_same_state(_state(full), last)
    if ablation == "previous-epoch-teacher":
        # The checkpoint of each epoch holds a teacher equal to the student at that boundary.
        for state in (first, last):
            for name, value in state["teacher"].items():
                if "running_" not in name and "num_batches" not in name:
                    assert torch.equal(value, state["student"][name]), name
        assert not torch.equal(first["teacher"]["head.mlp.0.weight"], last["teacher"]["head.mlp.0.weight"])
    else:
        predictor = [k for k in last["student"] if k.startswith("predictor.")]
        assert predictor and not any(k.startswith("predictor.") for k in last["teacher"])
        assert not torch.equal(first["student"][predictor[0]], last["student"][predictor[0]])  # it trains
        assert torch.equal(last["dino_loss"]["center"], torch.zeros_like(last["dino_loss"]["center"]))
        records = [json.loads(l) for l in (split / "log.jsonl").read_text().splitlines()]
        assert {r["teacher_temp"] for r in records if r["kind"] == "step"} == {0.1}  # the student's


def test_a_resume_that_changes_an_ablation_is_refused(tmp_path, tiny_image_folder):
    out = tmp_path / "run"
    train(tiny_config(tiny_image_folder, "train.epochs=2"), out, stop_after_epochs=1)
    with pytest.raises(DinoError, match="loss.centering"):
        train(tiny_config(tiny_image_folder, "train.epochs=2", "loss.centering=none"), out)


@pytest.mark.parametrize("geometric", ["per_image", "batched"])
def test_two_global_crops_without_local_crops(tmp_path, tiny_image_folder, geometric):
    """Table 8's 2 x 224 case at 32 px: only the two global views, two loss pairs per image."""
    out = tmp_path / "run"
    result = train(tiny_config(tiny_image_folder, "data.crops.num_local=0", f"data.geometric={geometric}",
                               "train.log_every=1"), out)
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) and r["kl"] > 0 for r in steps)
    assert result.last_epoch["images"] == 64
