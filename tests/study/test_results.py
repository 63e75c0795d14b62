"""A variant's numbers read back from its log.jsonl (written here by hand), the collapse verdict,
and the report's rows."""

import json
import math

import pytest

from dinossl.errors import DinoError
from dinossl.study.definition import study_from_dict
from dinossl.study.report import report_text
from dinossl.study.results import read_variant


def _write_log(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _step(step, epoch, entropy, kl):
    return {"kind": "step", "step": step, "epoch": epoch, "loss": 1.0, "teacher_entropy": entropy, "kl": kl}


def _epoch(epoch, entropy, kl, seconds, images=320):
    return {"kind": "epoch", "epoch": epoch, "teacher_entropy": entropy, "kl": kl, "seconds": seconds,
            "images": images}


def test_an_interrupted_and_resumed_run_counts_each_epoch_once(tmp_path):
    records = [
        _step(5, 1, 3.0, 0.5), _step(10, 1, 2.0, 0.4), _epoch(1, 2.5, 0.45, 10.0),
        {"kind": "knn", "epoch": 1, "knn_top1_k20": 30.0, "student_knn_top1_k20": 29.0},
        {"kind": "memory", "epoch": 1, "peak_bytes": 1000, "measure": "process_peak_rss"},
        _step(15, 2, 1.0, 0.2),  # interrupted in epoch 2, resumed from the epoch-1 checkpoint:
        _step(15, 2, 1.5, 0.3), _step(20, 2, 1.2, 0.25), _epoch(2, 1.3, 0.27, 30.0),
        {"kind": "knn", "epoch": 2, "knn_top1_k20": 33.0, "student_knn_top1_k20": 31.5},
        {"kind": "memory", "epoch": 2, "peak_bytes": 3000, "measure": "process_peak_rss"},
        {"kind": "result", "metric": "knn_top1_k20", "random_init": 28.0, "trained": 33.0,
         "gain_ci95": [2.0, 8.0], "student": 31.5, "student_gain_ci95": [1.0, 6.0]},
    ]
    _write_log(tmp_path / "a", records)
    result = read_variant(tmp_path / "a", "a", ["loss.centering=none"], out_dim=256)
    assert result.steps == [(0.5, 3.0, 0.5), (1.0, 2.0, 0.4), (1.5, 1.5, 0.3), (2.0, 1.2, 0.25)]
    assert (result.teacher_entropy, result.kl) == (1.3, 0.27)
    assert result.seconds == 40.0 and result.images_per_s == 640 / 40.0
    assert result.knn == [(1, 30.0, 29.0), (2, 33.0, 31.5)]
    assert (result.knn_teacher, result.knn_student, result.peak_bytes) == (33.0, 31.5, 3000)
    assert result.verdict == "no collapse"
    numbers = result.to_dict()
    assert numbers["max_entropy"] == math.log(256) and numbers["gain_ci95"] == [2.0, 8.0]


@pytest.mark.parametrize("entropy,kl,verdict", [
    (math.log(256) * 0.99, 1e-4, "uniform collapse"),
    (0.05, 1e-4, "dimensional collapse"),
    (0.05, 0.1, "no collapse"),  # the student has not caught up with a peaked teacher
    (3.0, 1e-4, "no collapse"),
])
def test_verdicts(tmp_path, entropy, kl, verdict):
    _write_log(tmp_path / "v", [_epoch(1, entropy, kl, 1.0)])
    assert read_variant(tmp_path / "v", "v", [], 256).verdict == verdict


def test_a_variant_that_has_not_run(tmp_path):
    with pytest.raises(DinoError, match="has not run"):
        read_variant(tmp_path / "missing", "missing", [], 256)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "log.jsonl").write_text('{"kind": "epoch"\n')
    with pytest.raises(DinoError, match="line 1 is not JSON"):
        read_variant(tmp_path / "broken", "broken", [], 256)


def test_report_rows(tmp_path):
    _write_log(tmp_path / "a", [_epoch(1, 0.01, 1e-5, 60.0, 6000),
                                {"kind": "result", "metric": "knn_top1_k20", "random_init": 28.0, "trained": 25.5,
                                 "gain_ci95": [-4.0, -1.0]}])
    _write_log(tmp_path / "b", [_epoch(1, 2.0, 0.5, 125.0)])
    study = study_from_dict("s", {"description": "Two variants.",
                                  "variants": [{"name": "a", "overrides": ["loss.centering=none"]}, {"name": "b"}]})
    results = [read_variant(tmp_path / "a", "a", ["loss.centering=none"], 256), read_variant(tmp_path / "b", "b", [], 256)]
    text = report_text(study, results, "dino study s.yaml", "2-core x86_64 CPU, no GPU")
    lines = text.splitlines()
    assert "Command: `dino study s.yaml`" in lines and "Machine: 2-core x86_64 CPU, no GPU" in lines
    row_a = next(line for line in lines if line.startswith("| a |"))
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells == ["a", "`loss.centering=none`", "25.50", "-2.50 (-4.00 to -1.00)", "—", "—", "0.010", "0.0000",
                     "dimensional collapse", "100.0", "—", "1 min 00 s"]
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert "(base)" in row_b and "no collapse" in row_b and "2 min 05 s" in row_b
    assert "ln 256 = 5.55" in text
