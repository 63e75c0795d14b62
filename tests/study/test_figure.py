"""study.png is drawn from the variants' results (matplotlib, extra viz): every plotted series is
the one study.json reports."""

import json

import pytest

from dinossl.study.definition import Study
from dinossl.study.figure import write_figure
from dinossl.study.report import write_report
from dinossl.study.results import read_variant

pytest.importorskip("matplotlib")


def _variant_log(folder, entropy_start: float, knn_start: float, student: bool) -> None:
    """8 steps (4 per epoch) whose entropy and KL fall step by step, 2 epochs, k-NN per epoch."""
    folder.mkdir()
    records = [{"kind": "step", "step": s, "epoch": 1 + (s - 1) // 4, "teacher_entropy": entropy_start - 0.3 * s,
                "kl": 0.5 / s} for s in range(1, 9)]
    records += [{"kind": "epoch", "epoch": e, "teacher_entropy": entropy_start - e, "kl": 0.2 / e, "seconds": 1,
                 "images": 8} for e in (1, 2)]
    records += [{"kind": "knn", "epoch": e, "knn_top1_k20": knn_start + 2 * e,
                 **({"student_knn_top1_k20": knn_start + e} if student else {})} for e in (1, 2)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_figure_plots_the_series_of_study_json(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    _variant_log(tmp_path / "a", 5.5, 30.0, student=True)
    _variant_log(tmp_path / "b", 3.0, 20.0, student=False)
    results = [read_variant(tmp_path / n, n, [], 256) for n in ("a", "b")]
    write_report(tmp_path, Study("test", "", {}, ()), results, "dino study test", "a machine")
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))  # keep the figure to read it back
    path = write_figure(tmp_path / "study.png", "dino study test", results)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    entropy_ax, kl_ax, knn_ax = figure.axes
    variants = json.loads((tmp_path / "study.json").read_text())["variants"]
    for index, variant in enumerate(variants):
        steps = variant["steps"]  # [fractional epoch, entropy, kl]: 0.25, 0.5, ... 2.0
        assert [s[0] for s in steps] == [s / 4 for s in range(1, 9)]
        for ax, column in ((entropy_ax, 1), (kl_ax, 2)):
            line = ax.lines[index]
            assert line.get_label() == variant["name"]
            assert list(line.get_xdata()) == [s[0] for s in steps]
            assert list(line.get_ydata()) == [s[column] for s in steps]
    knn_lines = {line.get_label(): line for line in knn_ax.lines}
    assert sorted(knn_lines) == ["a student", "a teacher", "b teacher"]  # b logged no student k-NN
    for variant in variants:
        for label, column in (("teacher", 1), ("student", 2)):
            line = knn_lines.get(f"{variant['name']} {label}")
            if line is not None:
                assert list(line.get_xdata()) == [k[0] for k in variant["knn_per_epoch"]]
                assert list(line.get_ydata()) == [k[column] for k in variant["knn_per_epoch"]]
    assert variants[0]["knn_per_epoch"] == [[1, 32.0, 31.0], [2, 34.0, 32.0]]  # the logged values
    close(figure)
