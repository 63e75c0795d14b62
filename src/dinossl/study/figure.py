"""study.png: teacher entropy and KL over training for every variant on shared axes (as the
paper's Fig. 7), and k-NN top-1 per epoch, teacher solid and student dashed (as its Fig. 6).
Needs matplotlib (``pip install 'dinossl[viz]'``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from dinossl.optional import require
from dinossl.safe_files import write_atomic
from dinossl.study.results import VariantResult

FIGURE_NAME = "study.png"


def _pyplot():
    matplotlib = require("matplotlib", "the study figure (study.png)")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "the study figure (study.png)")


def check_figure_dependencies() -> None:
    """Raise the one-line DinoError naming the extra before any training, when matplotlib is missing."""
    _pyplot()


def _series(result: VariantResult, index: int) -> tuple[list[float], list[float]]:
    """(epoch, value) of the step records (index 1: entropy, 2: KL), else of the epoch records."""
    if result.steps:
        return [s[0] for s in result.steps], [s[index] for s in result.steps]
    key = "teacher_entropy" if index == 1 else "kl"
    return [float(e["epoch"]) for e in result.epochs], [e[key] for e in result.epochs]


def write_figure(path: Path, title: str, results: Sequence[VariantResult]) -> Path:
    """Three panels: teacher entropy, KL(P_t || P_s) and k-NN top-1, all against epochs."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    entropy_ax, kl_ax, knn_ax = axes
    for index, result in enumerate(results):
        colour = colours[index % len(colours)]
        entropy_ax.plot(*_series(result, 1), color=colour, label=result.name)
        kl_ax.plot(*_series(result, 2), color=colour, label=result.name)
        if result.knn:
            epochs = [k[0] for k in result.knn]
            knn_ax.plot(epochs, [k[1] for k in result.knn], color=colour, marker="o", label=f"{result.name} teacher")
            if any(k[2] is not None for k in result.knn):
                knn_ax.plot(epochs, [k[2] for k in result.knn], color=colour, marker="x", linestyle="--",
                            label=f"{result.name} student")
    for k in sorted({r.out_dim for r in results}):
        entropy_ax.axhline(math.log(k), color="grey", linestyle=":", linewidth=1)
        entropy_ax.annotate(f"ln K = {math.log(k):.2f}", (0, math.log(k)), xycoords=("axes fraction", "data"),
                            textcoords="offset points", xytext=(4, -12), color="grey", fontsize=8)
    random_inits = sorted({r.final["random_init"] for r in results if "random_init" in r.final})
    for value in random_inits:
        knn_ax.axhline(value, color="grey", linestyle=":", linewidth=1)
        knn_ax.annotate("random init", (0, value), xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(4, 3), color="grey", fontsize=8)
    entropy_ax.set(title="teacher entropy H(P_t)", xlabel="epoch", ylabel="nats")
    entropy_ax.set_ylim(bottom=0)
    kl_ax.set(title="KL(P_t || P_s)", xlabel="epoch", ylabel="nats")
    kl_ax.set_ylim(bottom=0)
    knn_ax.set(title="k-NN top-1 on the held-out sample", xlabel="epoch", ylabel="%")
    entropy_ax.legend(fontsize=8)
    if knn_ax.lines:
        knn_ax.legend(fontsize=7)
    else:
        knn_ax.text(0.5, 0.5, "no k-NN checks\n(train.knn_every=0 or own data)", ha="center", va="center",
                    transform=knn_ax.transAxes, color="grey")
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
