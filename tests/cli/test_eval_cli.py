"""``dino eval knn|linear|finetune`` end to end on CIFAR-10 images with a checkpoint from a
short training, and the one-line errors for bad input (nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from dinossl.cli import build_parser, common, main
from dinossl.cli.eval_classification import _target
from dinossl.cli.eval_retrieval import backbone_run

SMALL = ["--resize", "32", "--crop", "32", "--num-workers", "0"]




def _one_line_error(capsys, fragment: str) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("dino eval knn: error:") and fragment in err[0], err


def test_knn_on_a_checkpoint_and_on_its_exported_backbone(tiny_run, cifar10_small, tmp_path, capsys):
    folder, feats = tmp_path / "knn", tmp_path / "features"
    out = folder / "results.json"
    args = ["eval", "knn", str(tiny_run / "checkpoint.pth"), "--data", str(cifar10_small), *SMALL, "--k", "10", "20",
            "--output", str(folder), "--features-dir", str(feats)]
    assert main(args) == 0
    printed = capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["evaluation"] == "knn" and record["weights"]["which"] == "teacher"
    assert record["data"]["train_images"] == 500 and record["data"]["val_images"] == 100
    assert record["settings"]["temperature"] == 0.07 and record["settings"]["ks"] == [10, 20]
    knn = record["results"]["knn"]
    assert set(knn) == {"10", "20"} and all(0 <= v["top1"] <= v["top5"] <= 100 for v in knn.values())
    assert "k=20" in printed.out and f"{knn['20']['top1']:.2f}" in printed.out
    assert len(list(feats.iterdir())) == 2

    # An existing results folder is kept unless --overwrite; the second run reuses the features.
    before = out.read_text()
    assert main(args) == 2
    _one_line_error(capsys, "not empty")
    assert out.read_text() == before
    assert main(args + ["--overwrite"]) == 0
    assert "reusing" in capsys.readouterr().err
    assert json.loads(out.read_text())["results"] == record["results"]

    # The exported teacher backbone (released-weights layout) gives the same figures.
    exported = tmp_path / "knn_exported"
    assert main(["eval", "knn", str(tiny_run / "teacher_backbone.safetensors"), "--train", str(cifar10_small / "train"),
                 "--val", str(cifar10_small / "val"), *SMALL, "--k", "10", "20", "--output", str(exported)]) == 0
    assert json.loads((exported / "results.json").read_text())["results"] == record["results"]


def test_settings_come_from_a_yaml_file_and_key_value_overrides_anywhere(tiny_run, cifar10_small, tmp_path,
                                                                         monkeypatch):
    settings = tmp_path / "knn.yaml"
    settings.write_text("images: {resize: 32, crop: 32, num_workers: 0}\nknn: {ks: [5], temperature: 0.5}\n")
    monkeypatch.chdir(tmp_path)
    weights = str(tiny_run / "teacher_backbone.pth")
    assert main(["eval", "knn", weights, "knn.ks=[3, 7]", "--data", str(cifar10_small), "--config", str(settings),
                 "images.batch_size=64"]) == 0
    folders = list(tmp_path.glob("eval-knn-*"))
    assert [f.name for f in folders] == [f"eval-knn-{cifar10_small.name}-{tiny_run.name}-teacher_backbone"]  # the default
    record = json.loads((folders[0] / "results.json").read_text())
    assert record["settings"]["ks"] == [3, 7] and record["settings"]["temperature"] == 0.5
    assert (record["settings"]["crop"], record["settings"]["batch_size"]) == (32, 64)


def test_linear_probe_with_augmentation_and_on_cached_features(tiny_run, cifar10_small, tmp_path, capsys):
    out = tmp_path / "linear" / "results.json"
    assert main(["eval", "linear", str(tiny_run / "teacher_backbone.pth"), "--data", str(cifar10_small), *SMALL,
                 "--epochs", "1", "--batch-size", "100", "--lr", "0.01", "--output", str(out.parent)]) == 0
    record = json.loads(out.read_text())
    assert record["protocol"].startswith("linear probe (RandomResizedCrop")
    assert record["settings"]["n_last_blocks"] == 2  # 4 by default, capped at the 2 blocks of this ViT
    assert record["results"]["feature_dim"] == 2 * 192
    assert record["settings"]["lr"] == pytest.approx(0.01 * 100 / 256)
    assert record["results"]["last"]["epoch"] == 1 and 0 <= record["results"]["last"]["top1"] <= 100
    assert "last" in capsys.readouterr().out

    cached = tmp_path / "linear_cached" / "results.json"
    assert main(["eval", "linear", str(tiny_run / "checkpoint.pth"), "--which", "student", "--data", str(cifar10_small),
                 *SMALL, "--epochs", "3", "--eval-every", "2", "--batch-size", "100", "--avgpool", "--cached-features",
                 "--output", str(cached.parent)]) == 0
    record = json.loads(cached.read_text())
    assert "cached" in record["protocol"] and "no augmentation" in record["protocol"]
    assert record["weights"]["which"] == "student" and record["settings"]["avgpool"] is True
    assert [h["epoch"] for h in record["results"]["history"] if "top1" in h] == [2, 3]


def test_finetune_runs_end_to_end(tiny_run, cifar10_small, tmp_path):
    out = tmp_path / "finetune" / "results.json"
    assert main(["eval", "finetune", str(tiny_run / "checkpoint.pth"), "--data", str(cifar10_small), *SMALL,
                 "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "100", "--layer-decay", "0.75",
                 "--output", str(out.parent)]) == 0
    record = json.loads(out.read_text())
    assert record["protocol"].startswith("fine-tuning")
    settings = record["settings"]
    assert (settings["label_smoothing"], settings["layer_decay"], settings["mixup"]) == (0.1, 0.75, 0.8)
    assert record["results"]["best"]["epoch"] == 1 and np.isfinite(record["results"]["history"][0]["train_loss"])


def _folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, count in classes.items():
        folder = root / cls if cls else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{cls}{i}.png")
    return root


@pytest.mark.parametrize("case", ["missing", "flat", "mismatch", "no_val", "both", "bad_weights", "crop", "bad_k"])
def test_bad_input_gives_one_line_and_writes_nothing(case, tiny_run, tmp_path, capsys):
    weights = str(tiny_run / "teacher_backbone.pth")
    good_train = _folder(tmp_path / "train", {"a": 2, "b": 2})
    good_val = _folder(tmp_path / "val", {"a": 1, "b": 1})
    out = tmp_path / "results"
    data_args = ["--train", str(good_train), "--val", str(good_val)]
    extra: list[str] = []
    fragment = {
        "missing": "does not exist", "flat": "no class subfolders", "mismatch": "class folders differ",
        "no_val": "must hold train/ and val/", "both": "not both", "bad_weights": "garbage.pth",
        "crop": "patch size", "bad_k": "positive",
    }[case]
    if case == "missing":
        data_args = ["--train", str(tmp_path / "nowhere"), "--val", str(good_val)]
    elif case == "flat":
        data_args = ["--train", str(_folder(tmp_path / "flat", {"": 3})), "--val", str(good_val)]
    elif case == "mismatch":
        data_args = ["--train", str(good_train), "--val", str(_folder(tmp_path / "other", {"a": 1, "c": 1}))]
    elif case == "no_val":
        data_args = ["--data", str(_folder(tmp_path / "only_train" / "train", {"a": 1}).parent)]
    elif case == "both":
        data_args += ["--data", str(tmp_path)]
    elif case == "bad_weights":
        weights = str(tmp_path / "garbage.pth")
        Path(weights).write_bytes(b"this is not a checkpoint")
    elif case == "crop":
        extra = ["--resize", "32", "--crop", "30"]
    elif case == "bad_k":
        extra = ["--k", "0"]
    assert main(["eval", "knn", weights, *data_args, "--num-workers", "0", "--output", str(out), *extra]) == 2
    _one_line_error(capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-tf32"], False), (["--tf32"], True)])
def test_tf32_flag_reaches_every_evaluation_runner(flag, expected, monkeypatch):
    """``--tf32/--no-tf32`` (where ``--device`` is) reaches the classification job, the
    descriptor commands and the commands that take the backbone from ``backbone_on_device``."""
    parser = build_parser()
    knn = parser.parse_args(["eval", "knn", "w.pth", "--data", "d", *flag])
    assert _target(knn).tf32 is expected
    retrieval = parser.parse_args(["eval", "retrieval", "w.pth", "--data", "d", "--dataset", "roxford5k", *flag])
    assert backbone_run(retrieval).tf32 is expected
    video = parser.parse_args(["eval", "video", "w.pth", "--davis", "d", *flag])
    seen = []
    monkeypatch.setattr(common, "configure_cuda", lambda device, tf32: seen.append(tf32))
    monkeypatch.setattr(common, "load_backbone", lambda *args, **kwargs: nn.Identity())
    common.backbone_on_device(video)
    assert seen == [expected]
