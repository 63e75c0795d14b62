"""A study end to end on 64 images (no k-NN: own data): run folders, report, figure, resume,
and refusal of a folder that holds something else."""

import json

import pytest
import yaml

from dinossl.errors import DinoError
from dinossl.study import run_study, study_from_dict, variant_configs
from dinossl.study.runner import FINISHED_FILE, STUDY_FILE
from dinossl.train import train
from dinossl.train.checkpoint import read_checkpoint
from tests.conftest import TINY_OVERRIDES

pytest.importorskip("matplotlib")

VARIANTS = [{"name": "both", "overrides": []}, {"name": "no-centering", "overrides": ["loss.centering=none"]}]


def _study(variants=VARIANTS):
    return study_from_dict("tiny", {"description": "Tiny.", "base": {"preset": "vit-tiny-cifar"}, "variants": variants})


def _configs(folder, study=None, *extra):
    return variant_configs(study or _study(), overrides=[*TINY_OVERRIDES, f"data.path={folder}", "train.log_every=1",
                                                         "train.epochs=2", *extra])


def test_a_study_trains_each_variant_reports_and_resumes(tmp_path, tiny_image_folder):
    out = tmp_path / "study"
    configs = _configs(tiny_image_folder)
    # An interrupted variant: the second one already holds its first epoch.
    train(configs[1][1], out / "no-centering", stop_after_epochs=1)
    (out / STUDY_FILE).write_text(yaml.safe_dump({"study": "tiny", "variants": [
        {"name": v.name, "overrides": list(v.overrides), "config": c.to_dict()} for v, c in configs]}))

    outcome = run_study(_study(), configs, out, "dino study tiny.yaml")
    assert outcome.trained == ["both", "no-centering"] and outcome.skipped == []
    assert sorted(p.name for p in outcome.written) == ["study.json", "study.md", "study.png"]
    for name in ("both", "no-centering"):
        assert (out / name / FINISHED_FILE).is_file() and read_checkpoint(out / name / "checkpoint.pth")["epoch"] == 2
    records = [json.loads(line) for line in (out / "no-centering" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # resumed, not restarted

    numbers = json.loads((out / "study.json").read_text())
    assert [v["name"] for v in numbers["variants"]] == ["both", "no-centering"]
    for variant in numbers["variants"]:
        assert variant["images_per_s"] > 0 and variant["seconds"] > 0 and len(variant["epochs"]) == 2
        assert variant["verdict"] in ("no collapse", "uniform collapse", "dimensional collapse")
        assert variant["knn_teacher"] is None  # own images: no k-NN check
    report = (out / "study.md").read_text()
    assert "| both | (base) |" in report and "| no-centering | `loss.centering=none` |" in report
    assert "Command: `dino study tiny.yaml`" in report

    again = run_study(_study(), configs, out, "dino study tiny.yaml")
    assert again.trained == [] and again.skipped == ["both", "no-centering"] and len(again.written) == 3


def test_a_folder_of_another_study_or_of_something_else_is_refused(tmp_path, tiny_image_folder):
    out = tmp_path / "study"
    one = [VARIANTS[0]]
    run_study(_study(one), _configs(tiny_image_folder, _study(one), "train.epochs=1"), out, "dino study", figure=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    other = _configs(tiny_image_folder, _study(one), "train.epochs=1", "loss.centering=sinkhorn")
    with pytest.raises(DinoError, match="variant both differs in loss.centering"):
        run_study(_study(one), other, out, "dino study")
    with pytest.raises(DinoError, match="this study has both, no-centering"):
        run_study(_study(), _configs(tiny_image_folder, None, "train.epochs=1"), out, "dino study")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "keep.jpg").write_bytes(b"mine")
    with pytest.raises(DinoError, match="holds no study.yaml"):
        run_study(_study(one), _configs(tiny_image_folder, _study(one)), elsewhere, "dino study")
    assert [p.name for p in elsewhere.iterdir()] == ["keep.jpg"]


def test_runtime_settings_may_change_when_a_study_resumes(tmp_path, tiny_image_folder):
    out = tmp_path / "study"
    one = [VARIANTS[0]]
    run_study(_study(one), _configs(tiny_image_folder, _study(one), "train.epochs=1"), out, "dino study", figure=False)
    resumed = run_study(_study(one), _configs(tiny_image_folder, _study(one), "train.epochs=1", "train.log_every=5"),
                        out, "dino study", figure=False)
    assert resumed.skipped == ["both"]


def test_a_preempted_variant_stops_the_study_unfinished_and_the_same_call_resumes_it(tmp_path, tiny_image_folder,
                                                                                    monkeypatch):
    """SIGTERM inside the first variant: its step is checkpointed, it is not marked finished,
    nothing is reported, and running the study again continues that variant."""
    import signal

    from dinossl.objective import loss as loss_module

    original = loss_module.DINOLoss.forward
    calls = {"n": 0}

    def signalled(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # inside the first epoch of the first variant (4 steps per epoch)
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    out = tmp_path / "study"
    configs = _configs(tiny_image_folder)
    monkeypatch.setattr(loss_module.DINOLoss, "forward", signalled)
    stopped = run_study(_study(), configs, out, "dino study tiny.yaml", figure=False)
    assert stopped.preempted_by == signal.SIGTERM and stopped.written == [] and stopped.trained == []
    assert not (out / "both" / FINISHED_FILE).exists() and not (out / "no-centering").exists()
    assert read_checkpoint(out / "both" / "checkpoint.pth")["step"] == 3

    monkeypatch.setattr(loss_module.DINOLoss, "forward", original)
    resumed = run_study(_study(), configs, out, "dino study tiny.yaml", figure=False)
    assert resumed.preempted_by == 0 and resumed.trained == ["both", "no-centering"]
    assert (out / "study.md").is_file()
