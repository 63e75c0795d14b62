"""A study across the 2 processes of a gloo job (started like torchrun starts them): with
--parallel each process trains its own variant alone; without it, both train each variant
together. Either way one report is written."""

from pathlib import Path

import yaml

from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES
from tests.process_ranks import start_ranks, wait_all

WORKER = Path(__file__).with_name("study_worker.py")


def _launch(args, timeout=420):
    return wait_all(start_ranks(WORKER, args, 2), timeout, "the study")


def _args(tmp_path, folder, out, *extra):
    study = tmp_path / "pair.yaml"
    study.write_text(yaml.safe_dump({"base": {"preset": "vit-tiny-cifar"}, "variants": [
        {"name": "ema", "overrides": []}, {"name": "previous-epoch", "overrides": ["optim.teacher_update=previous_epoch"]}]}))
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.batch_size_per_process")]
    return [str(study), *overrides, f"data.path={folder}", "train.batch_size_per_process=8", "model.drop_path=0.0",
            "--output", str(out), "--no-figure", *extra]


def test_parallel_processes_train_their_own_variants(tmp_path, tiny_image_folder):
    out = tmp_path / "parallel"
    results = _launch(_args(tmp_path, tiny_image_folder, out, "--parallel"))
    assert all(code == 0 for code, _ in results), results
    assert "process 0 trains variant 1/2 ema" in results[0][1]
    assert "process 1 trains variant 2/2 previous-epoch" in results[1][1]
    for name in ("ema", "previous-epoch"):
        state = read_checkpoint(out / name / "checkpoint.pth")
        assert (state["world_size"], state["global_batch"]) == (1, 8)  # each alone
    report = (out / "study.md").read_text()
    assert "| ema |" in report and "| previous-epoch |" in report and "2 processes" in report


def test_without_parallel_both_processes_train_every_variant(tmp_path, tiny_image_folder):
    out = tmp_path / "together"
    results = _launch(_args(tmp_path, tiny_image_folder, out))
    assert all(code == 0 for code, _ in results), results
    for name in ("ema", "previous-epoch"):
        state = read_checkpoint(out / name / "checkpoint.pth")
        assert (state["world_size"], state["global_batch"]) == (2, 16)  # DDP over both processes
    assert "| previous-epoch |" in (out / "study.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["ema", "previous-epoch", "study.json", "study.md", "study.yaml"]
