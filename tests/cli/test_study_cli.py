"""`dino study`: listing, printing, running a study file, and bad input as one line with exit 2."""

import pytest
import yaml

from dinossl.cli import main
from tests.conftest import TINY_OVERRIDES


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def test_list_and_print_config(capsys, tmp_path):
    status, out, _ = _run(capsys, "study", "--list")
    assert status == 0
    for name in ("collapse", "components", "teacher", "multicrop"):
        assert f"\n{name}: " in "\n" + out
    assert "  sharpening-only: loss.centering=none" in out
    status, out, _ = _run(capsys, "study", "collapse", "train.epochs=9", "--print-config", "--output", str(tmp_path / "x"))
    printed = yaml.safe_load(out)
    assert status == 0 and list(printed) == ["centering-only", "sharpening-only", "centering-and-sharpening"]
    assert printed["centering-only"]["loss"]["sharpening"] is False
    assert all(c["train"]["epochs"] == 9 for c in printed.values())
    assert not (tmp_path / "x").exists()


def _study_file(tmp_path, overrides):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"base": {"preset": "vit-tiny-cifar"},
                                    "variants": [{"name": "a", "overrides": overrides}]}))
    return str(path)


@pytest.mark.parametrize("argv,needle", [
    (["study"], "name a study"),
    (["study", "colapse"], "unknown study 'colapse'"),
    (["study", "collapse", "loss.centering=mean"], "loss.centering"),
    (["study", "collapse", "--config", "/nonexistent/base.yaml"], "does not exist"),
    (["study", "BAD_FILE"], "variant a: optim.teacher_update"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    argv = [_study_file(tmp_path, ["optim.teacher_update=frozen"]) if a == "BAD_FILE" else a for a in argv]
    status, _, err = _run(capsys, *argv, "--output", str(tmp_path / "out"))
    assert status == 2
    assert len(err) == 1 and needle in err[0] and err[0].startswith("dino study: error:")
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_study_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    status, _, err = _run(capsys, "study", "collapse", "--output", str(out), "--no-figure")
    assert status == 2 and len(err) == 1 and "holds no study.yaml" in err[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_study_file_runs_and_reports(tmp_path, capsys, tiny_image_folder):
    study = _study_file(tmp_path, ["loss.criterion=mse"])
    out = tmp_path / "out"
    status, printed, _ = _run(capsys, "study", study, *TINY_OVERRIDES, f"data.path={tiny_image_folder}",
                              "--output", str(out), "--no-progress", "--no-figure")
    assert status == 0 and "study.md" in printed
    assert "Command: `dino study " in (out / "study.md").read_text()
    assert yaml.safe_load((out / "a" / "config.yaml").read_text())["loss"]["criterion"] == "mse"
    assert not (out / "study.png").exists()
