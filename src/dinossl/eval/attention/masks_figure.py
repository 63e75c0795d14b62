"""The attention-mask Jaccard report as files: ``results.json`` and a ``jaccard.png`` figure
(per-head mean Jaccard bars, then example images with the best head's mask in red and the
ground-truth outline in green)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dinossl.eval.attention.maps import upsample
from dinossl.eval.attention.report import ImageAttention
from dinossl.eval.attention.masks import jaccard
from dinossl.eval.attention.overlay import mask_overlay
from dinossl.eval.results import RESULTS_NAME, write_results
from dinossl.optional import require

TRUTH_COLOUR = (40, 220, 60)


def example_picture(result: ImageAttention, truth: np.ndarray):
    """The input with the best head's mass mask tinted red and the ground truth outlined green."""
    masks = upsample(result.masks[:-1], result.patch_size).numpy()
    best = int(np.argmax([jaccard(mask, truth) for mask in masks]))
    picture = mask_overlay(result.picture, masks[best])
    return mask_overlay(picture, truth, colour=TRUTH_COLOUR, alpha=0.0), best


def write_mask_report(report: dict, examples: Sequence[tuple[ImageAttention, np.ndarray]], output: Path,
                      title: str = "") -> list[Path]:
    """Write ``results.json`` and ``jaccard.png`` into ``output``; returns their paths."""
    Figure = require("matplotlib.figure", "the Jaccard figure").Figure
    output.mkdir(parents=True, exist_ok=True)
    results = write_results(output / RESULTS_NAME, report, overwrite=True)  # the folder was checked before
    summary = report["summary"]
    per_head = summary["per_head_jaccard"]
    columns = max(1, len(examples))
    figure = Figure(figsize=(max(6.0, 2.6 * columns), 6.0 if examples else 3.2))
    grid = figure.add_gridspec(2 if examples else 1, columns, height_ratios=[1, 1.3] if examples else [1])
    bars = figure.add_subplot(grid[0, :])
    bars.bar(range(len(per_head)), per_head, color="#6a8caf")
    bars.axhline(summary["best_head_jaccard"], color="#c0392b", linestyle="--",
                 label=f"best head per image: {summary['best_head_jaccard']:.3f}")
    bars.axhline(summary["mean_head_jaccard"], color="#333333", linestyle=":",
                 label=f"mean over heads: {summary['mean_head_jaccard']:.3f}")
    bars.set_xticks(range(len(per_head)))
    bars.set_xlabel("head")
    bars.set_ylabel("mean Jaccard")
    bars.set_ylim(0, 1)
    fraction = report["settings"]["mass_fraction"]
    bars.set_title(f"{title + ': ' if title else ''}{int(round(100 * fraction))}%-mass masks vs. ground truth, "
                   f"{summary['images']} images")
    bars.legend(loc="upper right", fontsize="small")
    for column, (result, truth) in enumerate(examples):
        axis = figure.add_subplot(grid[1, column])
        picture, best = example_picture(result, truth)
        axis.imshow(picture)
        axis.set_title(f"head {best}: J={report['images'][column]['best']:.2f}", fontsize="small")
        axis.axis("off")
    figure.tight_layout()
    path = output / "jaccard.png"
    figure.savefig(path, dpi=100)
    return [results, path]
