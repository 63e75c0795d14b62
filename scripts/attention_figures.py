"""README figures for the attention tools: a checkpoint next to random-init weights of the same
architecture, on the Weizmann horses (attention-mask Jaccard, paper Fig. 4 protocol) and the
DAVIS-2016 sequences (label-propagation J&F, paper Table 5 protocol), with the no-model
baseline that copies the first mask to every frame for scale.

    python scripts/attention_figures.py --weights RUN/checkpoint.pth --shared-data ../shared/data \
        --output figures/attention

Writes ``<output>/attention_figures.json``, ``<output>/attention_figures.png`` and, per model
(``checkpoint``, ``random_init``), the Jaccard report under ``<label>/masks`` and the DAVIS
masks and scores under ``<label>/video``. Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dinossl.errors import DinoError
from dinossl.eval.video.davis import DavisLayout, object_ids, read_annotation, score_sequence, summarise
from dinossl.eval.frames import list_frames
from dinossl.eval.attention.masks import evaluate_masks, pair_images_with_masks
from dinossl.eval.attention.masks_figure import write_mask_report
from dinossl.outputs import usable_output_folder
from dinossl.eval.video.segmentation import PropagationSettings, evaluate_davis
from dinossl.models import VIT_SIZES, ViTBackbone, build_vit
from dinossl.weights import load_backbone


def random_like(backbone: nn.Module, seed: int) -> ViTBackbone:
    """A freshly initialised ViT of the same width, depth and patch size as ``backbone``."""
    if not isinstance(backbone, ViTBackbone):
        raise DinoError(f"attention figures need a ViT checkpoint, got a {type(backbone).__name__}")
    arch = next(name for name, (width, _) in VIT_SIZES.items() if width == backbone.embed_dim)
    torch.manual_seed(seed)
    return build_vit(arch, patch_size=backbone.patch_size, depth=len(backbone.blocks)).eval()


def copy_first_mask(davis: Path, sequences, max_frames) -> dict:
    """J, F and J&F of the no-model baseline that repeats the first annotation on every frame."""
    layout = DavisLayout(davis)
    per_sequence = {}
    for name in layout.sequences(sequences):
        frames = list_frames(layout.frames_dir(name))[:max_frames]
        truths = [read_annotation(layout.annotations_dir(name) / f"{frame.stem}.png") for frame in frames]
        objects = sorted(set().union(*(object_ids(t) for t in truths)))
        per_sequence[name] = score_sequence([truths[0]] * len(truths), truths, objects)
    report = summarise(per_sequence)
    return {"overall": report["overall"],
            "sequences": {name: {k: s[k] for k in ("J", "F", "J&F")} for name, s in report["sequences"].items()}}


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def evaluate(label: str, backbone: nn.Module, horses: Path, davis: Path, output: Path, args) -> dict:
    started = time.time()
    backbone = backbone.to(args.device)
    pairs = pair_images_with_masks(horses / "images", horses / "masks")[: args.max_images]
    report, examples = evaluate_masks(backbone, pairs, short_side=args.short_side, device=args.device, keep=4)
    write_mask_report(report, examples, output / label / "masks", title=label)
    settings = PropagationSettings(short_side=args.short_side)
    video = evaluate_davis(backbone, davis, output / label / "video", args.sequences, settings=settings,
                           device=args.device, max_frames=args.max_frames)
    return {
        "horses": {k: report["summary"][k] for k in ("images", "best_head_jaccard", "mean_head_jaccard",
                                                     "mean_map_jaccard", "per_head_jaccard")},
        "davis": {"overall": video["overall"],
                  "sequences": {name: {k: s[k] for k in ("J", "F", "J&F")} for name, s in video["sequences"].items()}},
        "seconds": round(time.time() - started, 1),
    }


def figure(results: dict, baseline: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    labels = list(results)
    metrics = [("horses", "best_head_jaccard", "horse Jaccard\nbest head"),
               ("horses", "mean_head_jaccard", "horse Jaccard\nmean head"),
               ("davis", "J", "DAVIS J"), ("davis", "F", "DAVIS F"), ("davis", "J&F", "DAVIS J&F")]
    fig = Figure(figsize=(8, 3.6))
    axis = fig.add_subplot()
    width = 0.8 / len(labels)
    for index, label in enumerate(labels):
        values = [results[label]["horses"][key] if group == "horses" else results[label]["davis"]["overall"][key]
                  for group, key, _ in metrics]
        positions = [m + (index - (len(labels) - 1) / 2) * width for m in range(len(metrics))]
        bars = axis.bar(positions, values, width, label=label)
        axis.bar_label(bars, fmt="%.3f", fontsize="x-small")
    for m, (group, key, _) in enumerate(metrics):
        if group == "davis":
            axis.hlines(baseline["overall"][key], m - 0.45, m + 0.45, colors="black", linestyles=":",
                        label="first mask copied" if key == "J" else None)
    axis.set_xticks(range(len(metrics)), [name for _, _, name in metrics], fontsize="small")
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize="small")
    axis.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict, baseline: dict) -> str:
    rows = ["| weights | horse Jaccard, best head | horse Jaccard, mean head | DAVIS J | DAVIS F | DAVIS J&F |",
            "|---|---|---|---|---|---|"]
    for label, r in results.items():
        h, d = r["horses"], r["davis"]["overall"]
        rows.append(f"| {label} | {h['best_head_jaccard']:.3f} | {h['mean_head_jaccard']:.3f} | "
                    f"{d['J']:.3f} | {d['F']:.3f} | {d['J&F']:.3f} |")
    d = baseline["overall"]
    rows.append(f"| first mask copied (no model) | – | – | {d['J']:.3f} | {d['F']:.3f} | {d['J&F']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint or backbone weights of a ViT")
    parser.add_argument("--shared-data", type=Path,
                        help="folder with weizmann-horses-100.tar.gz and davis2016-3seq.tar.gz")
    parser.add_argument("--horses", type=Path, help="extracted weizmann-horses folder (images/, masks/)")
    parser.add_argument("--davis", type=Path, help="extracted davis2016 folder (JPEGImages/, Annotations/)")
    parser.add_argument("--output", type=Path, default=Path("attention-figures"))
    parser.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                        help="write into a non-empty output folder")
    parser.add_argument("--short-side", type=int, default=480, help="image and frame short side (default 480)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N horses (quick check)")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames per sequence")
    parser.add_argument("--sequences", nargs="+", default=None, help="DAVIS sequences (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.shared_data is None and (args.horses is None or args.davis is None):
        parser.error("give --shared-data, or both --horses and --davis")

    output = usable_output_folder(args.output, args.overwrite)
    trained = load_backbone(args.weights)
    models = {"checkpoint": trained, "random_init": random_like(trained, args.seed)}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        horses = args.horses or extract(args.shared_data / "weizmann-horses-100.tar.gz", scratch) / "weizmann-horses"
        davis = args.davis or extract(args.shared_data / "davis2016-3seq.tar.gz", scratch) / "davis2016"
        results = {label: evaluate(label, model, horses, davis, output, args) for label, model in models.items()}
        baseline = copy_first_mask(davis, args.sequences, args.max_frames)
    summary = {
        "weights": str(args.weights),
        "architecture": {"embed_dim": trained.embed_dim, "depth": len(trained.blocks),
                         "patch_size": trained.patch_size},
        "settings": {"short_side": args.short_side, "mass_fraction": 0.6, "max_images": args.max_images,
                     "max_frames": args.max_frames, "sequences": args.sequences, "seed": args.seed,
                     "device": str(args.device)},
        "results": results,
        "davis_first_mask_copied": baseline,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "attention_figures.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = (f"{Path(args.weights).name} vs. random init (ViT d={trained.embed_dim}, depth {len(trained.blocks)}, "
             f"patch {trained.patch_size}), short side {args.short_side}")
    figure(results, baseline, output / "attention_figures.png", title)
    print(markdown(results, baseline))
    print(f"figures: {output}")


if __name__ == "__main__":
    main()
