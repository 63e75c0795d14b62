"""study.png is drawn from the variants' results (matplotlib, extra viz)."""

import json

import pytest

from dinossl.study.figure import write_figure
from dinossl.study.results import read_variant

pytest.importorskip("matplotlib")


def test_figure_from_two_variants(tmp_path):
    for name, entropy in (("a", 5.5), ("b", 0.1)):
        folder = tmp_path / name
        folder.mkdir()
        records = [{"kind": "step", "step": s, "epoch": 1 + (s - 1) // 4, "teacher_entropy": entropy, "kl": 0.1}
                   for s in range(1, 9)]
        records += [{"kind": "epoch", "epoch": e, "teacher_entropy": entropy, "kl": 0.1, "seconds": 1, "images": 8}
                    for e in (1, 2)]
        records += [{"kind": "knn", "epoch": e, "knn_top1_k20": 30.0 + e, "student_knn_top1_k20": 29.0 + e}
                    for e in (1, 2)]
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = [read_variant(tmp_path / n, n, [], 256) for n in ("a", "b")]
    path = write_figure(tmp_path / "study.png", "dino study test", results)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
