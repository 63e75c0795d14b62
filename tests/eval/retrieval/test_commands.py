"""Bad input to ``dino eval retrieval``, ``dino eval copydetection`` and ``dino dedupe``: one
clear line, exit status 2, nothing written, and the weights never loaded (nor downloaded)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from dinossl.cli import main

from tests.eval.retrieval.conftest import write_gnd


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo never",))


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: every bad input must be caught before."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the inputs were checked")

    monkeypatch.setattr("dinossl.inference.harness.load_backbone", refuse)


def _corrupt_folder(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def _check(capsys, argv, fragment, output: Path):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    command = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]
    assert err[0].startswith(f"dino {command}: error:") and fragment in err[0], err
    assert not output.exists()


def _retrieval_cases():
    """(name, prepare(bench) -> extra argv, expected fragment)."""
    def gnd_file(bench):
        return bench / "roxford5k" / "gnd_roxford5k.pkl"

    def set_gnd(record):
        return lambda bench: write_gnd(gnd_file(bench), record) and []

    def pickled_function(bench):
        gnd_file(bench).write_bytes(pickle.dumps({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [_RunsCode()]}))
        return []

    def empty_jpg(bench):
        shutil.rmtree(bench / "roxford5k" / "jpg")
        (bench / "roxford5k" / "jpg").mkdir()
        return []

    def corrupt_images(bench):
        for image in (bench / "roxford5k" / "jpg").iterdir():
            image.write_bytes(b"\xff\xd8\xff garbage")
        return []

    def no_bbx(bench):
        write_gnd(gnd_file(bench), {"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"easy": [0]}]})
        return ["--crop-queries"]

    return [
        ("missing folder", lambda bench: shutil.rmtree(bench) or [], "does not exist"),
        ("missing gnd", lambda bench: gnd_file(bench).unlink() or [], "gnd_roxford5k.pkl does not exist"),
        ("malformed gnd", set_gnd({"imlist": ["db00"], "qimlist": ["query0"], "gnd": {}}), "one dict per query"),
        ("gnd not a pickle", lambda bench: gnd_file(bench).write_text("imlist,qimlist") and [], "not a readable pickle"),
        ("pickled function", pickled_function, "refused to unpickle"),
        ("empty image folder", empty_jpg, "are not in"),
        ("corrupt images", corrupt_images, "could be decoded"),
        ("no bbx", no_bbx, "needs a bbx"),
        ("imsize", lambda bench: ["--imsize", "0"], "imsize must be positive"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_retrieval_bad_input(case, revisited_root, tmp_path, capsys, no_weights):
    bench = tmp_path / "bench"
    shutil.copytree(revisited_root, bench)
    _, prepare, fragment = _retrieval_cases()[case]
    extra = prepare(bench)
    out = tmp_path / "out"
    _check(capsys, ["eval", "retrieval", "dino_vits16", "--data", str(bench), "--dataset", "roxford5k",
                    "--output", str(out), *extra], fragment, out)


def test_retrieval_refuses_a_non_empty_output_folder(revisited_root, tmp_path, capsys, no_weights):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["eval", "retrieval", "dino_vits16", "--data", str(revisited_root), "--dataset", "roxford5k",
                 "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.parametrize("case", ["missing folder", "no originals", "empty strong", "corrupt originals",
                                  "missing distractors", "corrupt whitening", "empty distractors"])
def test_copydetection_bad_input(case, copydays_set, tmp_path, capsys, no_weights):
    root = tmp_path / "cd"
    shutil.copytree(copydays_set / "copydays", root)
    extra: list[str] = []
    if case == "missing folder":
        shutil.rmtree(root)
        fragment = "does not exist"
    elif case == "no originals":
        shutil.rmtree(root / "original")
        fragment = "no original/ folder"
    elif case == "empty strong":
        shutil.rmtree(root / "strong")
        (root / "strong").mkdir()
        fragment = "strong copies folder"
    elif case == "corrupt originals":
        for image in (root / "original").iterdir():
            image.write_bytes(b"\xff\xd8\xff garbage")
        fragment = "could be decoded"
    elif case == "missing distractors":
        extra = ["--distractors", str(tmp_path / "nowhere")]
        fragment = "distractors folder"
    elif case == "corrupt whitening":
        extra = ["--whitening", str(_corrupt_folder(tmp_path / "white"))]
        fragment = "could be decoded"
    else:
        (tmp_path / "empty").mkdir()
        extra = ["--distractors", str(tmp_path / "empty")]
        fragment = "is empty"
    out = tmp_path / "out"
    _check(capsys, ["eval", "copydetection", "dino_vitb8", "--data", str(root), "--output", str(out), *extra],
           fragment, out)


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "no images", "corrupt images", "missing query",
                                  "corrupt query", "threshold", "foreign output"])
def test_dedupe_bad_input(case, horses_dir, tmp_path, capsys, no_weights):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(horses_dir / "images" / "horse001.jpg", folder / "a.jpg")
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "missing folder":
        shutil.rmtree(folder)
        fragment = "does not exist"
    elif case == "empty folder":
        (folder / "a.jpg").unlink()
        fragment = "is empty"
    elif case == "no images":
        (folder / "a.jpg").unlink()
        (folder / "notes.txt").write_text("x")
        fragment = "no images in"
    elif case == "corrupt images":
        (folder / "a.jpg").unlink()
        _corrupt_folder(folder / "sub")
        fragment = "could be decoded"
    elif case == "missing query":
        extra = ["--query", str(tmp_path / "nowhere.jpg")]
        fragment = "does not exist"
    elif case == "corrupt query":
        (tmp_path / "q.jpg").write_bytes(b"garbage")
        extra = ["--query", str(tmp_path / "q.jpg")]
        fragment = "not a readable image"
    elif case == "threshold":
        extra = ["--threshold", "1.5"]
        fragment = "threshold must be between 0 and 1"
    else:
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        fragment = "holds other files"
    argv = ["dedupe", "dino_vits16", str(folder), "--output", str(out), *extra]
    if case == "foreign output":
        assert main(argv) == 2
        assert fragment in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    else:
        _check(capsys, argv, fragment, out)
