"""`dino train` turns bad input into one error line and exit status 2, touching nothing."""

import pytest
import yaml

from dinossl.cli import main
from tests.conftest import TINY_OVERRIDES


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "/nonexistent/folder"], "does not exist"),
        (["optim.base_lr=-0.1"], "optim.base_lr"),
        (["data.crops.global_size=33"], "data.crops.global_size"),
        (["data.crops.num_local=-2"], "data.crops.num_local"),
        (["model.unknown=1"], "model.unknown"),
        (["train.device=foo"], "train.device"),
        (["--device", "foo"], "train.device"),
        (["train.epochs=99999999999999999999"], "train.epochs"),
        (["train.checkpoint_every_steps=-1"], "train.checkpoint_every_steps"),
        (["loss.centering=sk"], "loss.centering"),
        (["optim.teacher_update=slow"], "optim.teacher_update"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    status, err = _run(capsys, "train", "--output", str(tmp_path / "out"), *args)
    assert status == 2
    assert len(err) == 1 and needle in err[0] and err[0].startswith("dino train: error:")
    assert not (tmp_path / "out").exists()


def test_missing_yaml_and_empty_folder(tmp_path, capsys):
    status, err = _run(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert status == 2 and "nope.yaml" in err[0]
    (tmp_path / "empty").mkdir()
    status, err = _run(capsys, "train", "--output", str(tmp_path / "out"), "--data", str(tmp_path / "empty"))
    assert status == 2 and "empty" in err[0] and len(err) == 1


def test_train_and_resume_a_finished_run(tmp_path, capsys, tiny_image_folder):
    out = tmp_path / "out"
    args = ["train", "--output", str(out), "--data", str(tiny_image_folder), *TINY_OVERRIDES]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "run folder" in stdout
    before = (out / "checkpoint.pth").read_bytes()
    assert main(args) == 0  # finished run: resumes at its end, trains nothing
    assert (out / "checkpoint.pth").read_bytes() == before


def test_final_knn_line_states_the_gain_and_its_interval(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    import dinossl.cli.train
    from dinossl.train import TrainResult

    def fake_train(config, output, **kwargs):
        knn = {"kind": "result", "metric": "knn_top1_k20", "random_init": 28.95, "trained": 32.5,
               "gain_ci95": [2.1, 5.0]}
        return TrainResult(Path(output), config.train.epochs, {}, [knn], [])

    monkeypatch.setattr(dinossl.cli.train, "train", fake_train)
    assert main(["train", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("trained teacher 32.50% vs. random init 28.95% (gain +3.55 points, "
            "95% bootstrap interval +2.10 to +5.00)") in out


def test_a_config_file_without_a_preset_builds_on_the_default_preset(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("optim:\n  base_lr: 0.002\n")
    assert main(["train", "--config", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["arch"] == "vit_tiny" and printed["optim"]["base_lr"] == 0.002


@pytest.mark.parametrize("preempted_by, status", [(0, 0), (15, 143)])
def test_under_torchrun_only_rank_0_prints(tmp_path, capsys, monkeypatch, preempted_by, status):
    """Every rank of a torchrun job runs the command: the lines after training (run folder,
    k-NN, preemption) come from rank 0 alone, and every rank exits with the same status."""
    from pathlib import Path

    import dinossl.cli.train
    from dinossl.train import TrainResult

    def fake_train(config, output, **kwargs):
        return TrainResult(Path(output), config.train.epochs, {}, [], [], preempted_by=preempted_by, steps_done=3)

    monkeypatch.setattr(dinossl.cli.train, "train", fake_train)
    printed = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--output", str(tmp_path / "out")]) == status
        printed[rank] = capsys.readouterr().out
    assert ("run folder:" in printed["0"]) == (not preempted_by)
    assert ("stopped on SIGTERM" in printed["0"]) == bool(preempted_by)
    assert printed["1"] == ""
