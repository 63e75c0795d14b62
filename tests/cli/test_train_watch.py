"""Watching a run: kept checkpoints (train.keep_every), k-NN of teacher and student on the user's
labelled data (train.val_data), attention snapshots (train.attention_every), a W&B tracker
(a stand-in module), and `dino plot`."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.cli import main
from dinossl.data import open_images
from dinossl.eval.classification.knn_monitor import folder_knn_scorer
from dinossl.safe_files import read_weights_file
from dinossl.train.run_plot import curves, read_records
from dinossl.weights import load_backbone
from tests.conftest import TINY_OVERRIDES


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in for the wandb package that records what it is given."""
    calls = {"init": [], "log": [], "finished": 0}

    class Run:
        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] += 1

    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: calls["init"].append(kwargs) or Run()
    module.Image = lambda array: ("image", np.asarray(array).shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_a_run_keeps_checkpoints_reports_knn_and_attention_and_plots(tmp_path, tiny_image_folder, cifar10_small,
                                                                       fake_wandb, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "vit-tiny-cifar", "--data", str(tiny_image_folder), "--output", str(run),
                 *TINY_OVERRIDES, "train.epochs=2", "train.keep_every=1", f"train.val_data={cifar10_small}",
                 "train.knn_every=1", "train.attention_every=2", "train.logger=wandb",
                 "train.logger_project=tests"]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err

    # Every epoch's checkpoint kept beside the latest.
    assert sorted(p.name for p in run.glob("checkpoint*.pth")) == ["checkpoint.pth", "checkpoint0001.pth",
                                                                   "checkpoint0002.pth"]
    latest, kept = read_weights_file(run / "checkpoint.pth"), read_weights_file(run / "checkpoint0002.pth")
    assert kept["epoch"] == 2 and all(torch.equal(kept["teacher"][k], v) for k, v in latest["teacher"].items())
    assert read_weights_file(run / "checkpoint0001.pth")["epoch"] == 1

    # k-NN of teacher and student on the user's data each epoch: the numbers of the networks kept.
    records = read_records(run)
    knn = [r for r in records if r["kind"] == "knn"]
    assert [r["epoch"] for r in knn] == [1, 2] and all(r["source"] == "val_data" for r in knn)
    monitor = folder_knn_scorer(str(cifar10_small), 32)
    for record in knn:
        checkpoint = run / f"checkpoint{record['epoch']:04d}.pth"
        assert monitor.top1(load_backbone(checkpoint)) == pytest.approx(record["teacher_knn_top1"])
        assert monitor.top1(load_backbone(checkpoint, which="student")) == pytest.approx(record["student_knn_top1"])
    assert "epoch 2: k-NN top-1 on" in text and "teacher" in text and "student" in text
    assert "W&B / MLflow logging is off" not in text  # the tracker was on

    # Attention snapshot of epoch 2: 4 sample images, each with its 3 head maps and their mean.
    sheet = Image.open(run / "attention" / "epoch_0002.png")
    assert sheet.size == (5 * 32, 4 * 32) and not (run / "attention" / "epoch_0001.png").exists()
    first = open_images(None, "heldout").load(0)[0].convert("RGB")
    assert np.array_equal(np.asarray(sheet)[:32, :32], np.asarray(first))  # 32-px images: no resizing
    assert [r["file"] for r in records if r["kind"] == "attention"] == [str(run / "attention" / "epoch_0002.png")]
    assert any((run / "tensorboard").iterdir())

    # The tracker got the records and the picture, and was closed.
    assert fake_wandb["init"][0]["project"] == "tests" and fake_wandb["finished"] == 1
    logged = fake_wandb["log"]
    assert any("knn/teacher_knn_top1" in entry for entry in logged) and any("epoch/loss" in entry for entry in logged)
    assert any(entry.get("attention/teacher") == ("image", (4 * 32, 5 * 32, 3)) for entry in logged)

    # dino plot: one PNG of the curves per epoch; an existing PNG is kept unless --overwrite.
    assert main(["plot", str(run)]) == 0
    assert Image.open(run / "curves.png").size[0] > 600
    data = curves(records)
    assert [e for e, _ in data["loss"]] == [1, 2] and [e for e, _ in data["teacher_knn_top1"]] == [1, 2]
    assert data["loss"] == [(r["epoch"], r["loss"]) for r in records if r["kind"] == "epoch"]
    assert main(["plot", str(run)]) == 2
    assert main(["plot", str(run), "--overwrite"]) == 0


def test_plot_curves_take_the_last_record_of_an_epoch_and_the_mean_lr():
    records = [{"kind": "step", "epoch": 1, "step": 1, "lr": 0.1}, {"kind": "step", "epoch": 1, "step": 2, "lr": 0.3},
               {"kind": "epoch", "epoch": 1, "loss": 5.0, "kl": 0.1, "teacher_entropy": 2.0, "center_norm": 0.5},
               {"kind": "epoch", "epoch": 1, "loss": 4.0, "kl": 0.2, "teacher_entropy": 2.5, "center_norm": 0.6},
               {"kind": "knn", "epoch": 1, "knn_top1_k20": 30.0}, {"kind": "warning", "message": "x"}]
    data = curves(records)
    assert data["loss"] == [(1, 4.0)] and data["lr"] == [(1, pytest.approx(0.2))] and data["knn_top1_k20"] == [(1, 30.0)]


def test_bad_watch_settings_are_one_line_and_write_nothing(tmp_path, tiny_image_folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    cases = [(["train.logger=mlflow"], "train.logger=mlflow needs mlflow, which is not installed: pip install "
                                       "'dinossl[mlflow]'"),
             ([f"train.val_data={tiny_image_folder}"], "train.val_data: set train.knn_every"),
             ([f"train.val_data={tmp_path / 'nowhere'}", "train.knn_every=1"], "does not exist"),
             (["model.arch=resnet50", "train.attention_every=1"], "train.attention_every: attention maps need a ViT")]
    for overrides, fragment in cases:
        out = tmp_path / "run"
        assert main(["train", "--preset", "vit-tiny-cifar", "--data", str(tiny_image_folder), "--output", str(out),
                     *TINY_OVERRIDES, *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (overrides, err)
        assert not out.exists()
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "holds no log.jsonl" in capsys.readouterr().err
