"""The one results writer: the same header in every results file, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl import __version__
from dinossl.eval.attention.masks import evaluate_masks
from dinossl.eval.attention.masks_figure import write_mask_report
from dinossl.eval.results import command_line, write_results
from dinossl.safe_files import file_sha256

HEADER = ("command", "weights", "settings", "versions", "machine", "written")


def test_the_header_names_command_weights_hash_settings_versions_and_machine(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    path = write_results(tmp_path / "results.json", {"weights": {"path": str(weights)}, "settings": {"k": 1},
                                                     "results": {"top1": 50.0}})
    record = json.loads(path.read_text())
    assert all(key in record for key in HEADER)
    assert record["weights"]["sha256"] == file_sha256(weights)
    assert record["versions"]["dinossl"] == __version__ and record["versions"]["torch"] == torch.__version__
    assert record["machine"]["cores"] >= 1 and record["results"] == {"top1": 50.0}
    assert command_line(["/usr/bin/dino", "eval", "knn", "my weights.pth"]) == "dino eval knn 'my weights.pth'"


def test_a_record_without_weights_or_settings_is_refused(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        write_results(tmp_path / "results.json", {"settings": {}})
    assert not (tmp_path / "results.json").exists()


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):  # not JSON-serialisable: found before anything is written
        write_results(path, {"weights": {}, "settings": {"bad": object()}}, overwrite=True)
    assert path.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_the_mask_report_is_written_by_the_same_writer(tmp_path, brightness_backbone):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:16] = 255
    Image.fromarray(pixels).save(images / "a.png")
    Image.fromarray(pixels[..., 0]).save(masks / "a.png")
    report, kept = evaluate_masks(brightness_backbone(heads=2), [(images / "a.png", masks / "a.png")],
                                  short_side=None, progress=False, keep=1)
    write_mask_report(report, kept, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(key in record for key in HEADER) and record["summary"]["images"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["jaccard.png", "results.json"]
