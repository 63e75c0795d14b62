"""``dino eval knn|linear|finetune`` end to end on CIFAR-10 images with a checkpoint from a
short training, and the one-line errors for bad input (nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dinossl.cli import build_parser, common, main
from dinossl.cli.eval_classification import _target

SMALL = ["--resize", "32", "--crop", "32", "--num-workers", "0"]




def _direct_features(weights: Path, root: Path, split: str, blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Computed here: (N, blocks * d) [CLS] tokens of the last ``blocks`` blocks (each after the
    final LayerNorm; 1 block: the backbone's output) of root/split's images (bicubic resize and
    centre crop to 32 px, normalised), and (N,) labels by sorted class folder."""
    from dinossl.data.augment import evaluation_transform
    from dinossl.weights import load_backbone

    backbone, transform = load_backbone(weights), evaluation_transform(32, 32)
    classes = sorted(p.name for p in (root / split).iterdir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((root / split / name).iterdir())]
    pixels = []
    for path, _ in files:
        with Image.open(path) as image:
            pixels.append(transform(image.convert("RGB")))
    with torch.no_grad():
        tokens = backbone.intermediate_layers(torch.stack(pixels), blocks)
    return torch.cat([t[:, 0] for t in tokens], dim=1), torch.tensor([label for _, label in files])


def _direct_knn(weights: Path, root: Path, ks: tuple[int, ...], temperature: float) -> dict[int, tuple[float, float]]:
    """k -> (top-1, top-5) in percent, computed here: L2-normalised [CLS] features; each val image's
    k most cosine-similar train images vote with weight exp(similarity / temperature)."""
    (bank, bank_labels), (queries, labels) = (_direct_features(weights, root, split) for split in ("train", "val"))
    bank, queries = nn.functional.normalize(bank, dim=1), nn.functional.normalize(queries, dim=1)
    similarity = queries @ bank.T
    scores = {}
    for k in ks:
        nearest, index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(queries), 10).scatter_add_(1, bank_labels[index], (nearest / temperature).exp())
        hits = votes.argsort(dim=1, descending=True) == labels[:, None]
        scores[k] = tuple(100.0 * int(hits[:, :top].any(dim=1).sum()) / len(labels) for top in (1, 5))
    return scores


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
    assert set(knn) == {"10", "20"}
    direct = _direct_knn(tiny_run / "teacher_backbone.pth", cifar10_small, (10, 20), 0.07)
    for k, (top1, top5) in direct.items():  # measured: top-1 18 %, top-5 71 % (k=10) and 69 % (k=20)
        assert (knn[str(k)]["top1"], knn[str(k)]["top5"]) == pytest.approx((top1, top5), abs=1e-6)
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
    assert record["results"]["last"]["epoch"] == 1 and "last" in capsys.readouterr().out
    # The saved head on features computed here ([CLS] of the last 2 blocks): the reported accuracy.
    head = _tensors(out.parent / "linear_head.safetensors")
    features, labels = _direct_features(tiny_run / "teacher_backbone.pth", cifar10_small, "val", blocks=2)
    logits = features @ head["linear.weight"].T + head["linear.bias"]
    hits = logits.argsort(dim=1, descending=True) == labels[:, None]
    best = record["results"]["best"]  # measured: top-1 15 %, top-5 67 % after 1 epoch
    assert (best["top1"], best["top5"]) == pytest.approx(
        tuple(100.0 * int(hits[:, :top].any(dim=1).sum()) / len(labels) for top in (1, 5)), abs=1e-6)

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
    # The saved network (backbone and head) on val features computed here: the accuracy reported for it.
    entry = record["results"]["history"][0]
    prefix = {"model": "", "ema": "ema_"}[entry["saved"]]
    head = _tensors(out.parent / "finetuned.safetensors")
    features, labels = _direct_features(out.parent / "finetuned.safetensors", cifar10_small, "val")
    hits = (features @ head["head.weight"].T + head["head.bias"]).argsort(dim=1, descending=True) == labels[:, None]
    measured = tuple(100.0 * int(hits[:, :top].any(dim=1).sum()) / len(labels) for top in (1, 5))
    assert (entry[f"{prefix}top1"], entry[f"{prefix}top5"]) == pytest.approx(measured, abs=1e-6)  # measured: 18 %, 62 %


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
    descriptor commands and the commands that take the backbone from ``backbone_harness``."""
    parser = build_parser()
    knn = parser.parse_args(["eval", "knn", "w.pth", "--data", "d", *flag])
    assert _target(knn).tf32 is expected
    retrieval = parser.parse_args(["eval", "retrieval", "w.pth", "--data", "d", "--dataset", "roxford5k", *flag])
    assert common.backbone_harness(retrieval).tf32 is expected
    video = parser.parse_args(["eval", "video", "w.pth", "--davis", "d", *flag])
    seen = []
    monkeypatch.setattr("dinossl.inference.harness.configure_cuda", lambda device, tf32: seen.append(tf32))
    monkeypatch.setattr("dinossl.inference.harness.load_backbone", lambda *args, **kwargs: nn.Identity())
    common.backbone_harness(video).load()
    assert seen == [expected]
def _stop_after_epoch(monkeypatch, epoch: int) -> None:
    """The probe is killed right after it saved the state of ``epoch``."""
    from dinossl.eval.classification.probe_checkpoint import ProbeCheckpoint

    save = ProbeCheckpoint.save

    def save_then_stop(self, state):
        save(self, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProbeCheckpoint, "save", save_then_stop)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_linear_probe_saves_its_best_head_and_resumes_after_a_kill(tiny_run, cifar10_small, tmp_path, monkeypatch,
                                                                   capsys):
    weights = str(tiny_run / "teacher_backbone.pth")
    args = ["eval", "linear", weights, "--data", str(cifar10_small), *SMALL, "--epochs", "3", "--batch-size", "100",
            "--lr", "0.05"]
    whole = tmp_path / "whole"
    assert main(args + ["--output", str(whole)]) == 0
    record = json.loads((whole / "results.json").read_text())
    head_info = json.loads((whole / "linear_head.json").read_text())
    best = record["results"]["best"]
    assert (head_info["epoch"], head_info["top1"]) == (best["epoch"], best["top1"])
    assert head_info["n_last_blocks"] == 2 and head_info["avgpool"] is False and head_info["classes"] == sorted(
        p.name for p in (cifar10_small / "train").iterdir())
    assert _tensors(whole / "linear_head.safetensors")["linear.weight"].shape == (10, 2 * 192)
    assert not (whole / "linear_checkpoint.pth").exists()  # removed once the probe finished

    killed = tmp_path / "killed"
    _stop_after_epoch(monkeypatch, 2)
    assert main(args + ["--output", str(killed)]) == 130
    assert (killed / "linear_checkpoint.pth").is_file() and not (killed / "results.json").exists()
    monkeypatch.undo()
    assert main(args + ["--output", str(killed), "--num-workers", "0"]) == 0  # the same command resumes
    assert "resuming from" in capsys.readouterr().err
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["results"]["history"] == record["results"]["history"]  # as if never stopped
    assert all(torch.equal(a, b) for a, b in zip(_tensors(killed / "linear_head.safetensors").values(),
                                                 _tensors(whole / "linear_head.safetensors").values()))

    # Other settings in a folder that holds a checkpoint: refused, naming them; nothing changes.
    _stop_after_epoch(monkeypatch, 1)
    assert main(args + ["--output", str(tmp_path / "other")]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args[:-1] + ["0.1", "--output", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (settings.base_lr)" in err[0]


def test_evaluate_scores_a_saved_head_and_the_reference_layout(tiny_run, cifar10_small, tmp_path, capsys):
    weights = str(tiny_run / "teacher_backbone.pth")
    trained = tmp_path / "trained"
    assert main(["eval", "linear", weights, "--data", str(cifar10_small), *SMALL, "--epochs", "2", "--batch-size",
                 "100", "--cached-features", "--avgpool", "--n-last-blocks", "1", "--output", str(trained)]) == 0
    best = json.loads((trained / "results.json").read_text())["results"]["best"]

    scored = tmp_path / "scored"
    assert main(["eval", "linear", weights, "--evaluate", str(trained), "--val", str(cifar10_small / "val"), *SMALL,
                 "--output", str(scored)]) == 0
    record = json.loads((scored / "results.json").read_text())
    assert record["protocol"] == "saved linear head (no training)" and "train" not in record["data"]
    assert (record["results"]["top1"], record["results"]["top5"]) == (best["top1"], best["top5"])
    assert record["results"]["head_epoch"] == best["epoch"] and "val" in capsys.readouterr().out

    # The same head in the reference's layout: DDP keys, [CLS]/mean-patch features interleaved.
    head = _tensors(trained / "linear_head.safetensors")
    w = head["linear.weight"]
    d = w.shape[1] // 2
    interleaved = torch.stack([w[:, :d], w[:, d:]], dim=-1).reshape(w.shape[0], 2 * d)
    torch.save({"epoch": 2, "best_acc": 0.0, "state_dict": {"module.linear.weight": interleaved,
                                                             "module.linear.bias": head["linear.bias"]}},
               tmp_path / "linearweights.pth")
    reference = tmp_path / "reference"
    assert main(["eval", "linear", weights, "--evaluate", str(tmp_path / "linearweights.pth"), "--data",
                 str(cifar10_small), *SMALL, "--avgpool", "--n-last-blocks", "1", "--output", str(reference)]) == 0
    scores = json.loads((reference / "results.json").read_text())["results"]
    assert (scores["top1"], scores["top5"]) == (best["top1"], best["top5"])

    # Features the head was not trained on: one line, nothing written.
    capsys.readouterr()
    assert main(["eval", "linear", weights, "--evaluate", str(tmp_path / "linearweights.pth"), "--data",
                 str(cifar10_small), *SMALL, "--n-last-blocks", "1", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads 384 features, the backbone gives 192" in err[0]
    assert not (tmp_path / "bad").exists()


def test_finetune_saves_its_best_network_and_resumes_after_a_kill(tiny_run, cifar10_small, tmp_path, monkeypatch):
    args = ["eval", "finetune", str(tiny_run / "checkpoint.pth"), "--data", str(cifar10_small), *SMALL, "--epochs",
            "2", "--warmup-epochs", "1", "--batch-size", "100", "--model-ema-decay", "0.9"]
    whole = tmp_path / "whole"
    assert main(args + ["--output", str(whole)]) == 0
    record = json.loads((whole / "results.json").read_text())
    saved = record["results"]["saved_network"]
    info = json.loads((whole / "finetuned.json").read_text())
    assert (info["epoch"], info["saved"]) == (saved["epoch"], saved["network"])
    network = _tensors(whole / "finetuned.safetensors")
    assert network["head.weight"].shape == (10, 192) and "backbone.cls_token" in network
    assert not (whole / "finetune_checkpoint.pth").exists()
    # The saved network's backbone is a backbone file every command reads.
    assert main(["eval", "knn", str(whole / "finetuned.safetensors"), "--data", str(cifar10_small), *SMALL,
                 "--output", str(tmp_path / "knn")]) == 0

    killed = tmp_path / "killed"
    _stop_after_epoch(monkeypatch, 1)
    assert main(args + ["--output", str(killed)]) == 130
    monkeypatch.undo()
    assert main(args + ["--output", str(killed)]) == 0
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["results"]["history"] == record["results"]["history"]
    assert all(torch.equal(network[k], v) for k, v in _tensors(killed / "finetuned.safetensors").items())
