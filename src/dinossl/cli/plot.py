"""``dino plot RUN_FOLDER``: the run's curves per epoch in one PNG (needs the viz extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinossl.cli.common import HelpFormatter
from dinossl.outputs import usable_output_file
from dinossl.train.run_plot import PLOT_NAME, plot_run, read_records


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", formatter_class=HelpFormatter,
        help="draw a training run's curves (loss, lr, entropy, KL, center norm, k-NN) into one PNG",
        description="Reads RUN_FOLDER/log.jsonl (also while the run goes on) and draws loss, learning rate, "
        "teacher entropy, KL, center norm and the k-NN accuracies per epoch into one PNG, without TensorBoard.",
    )
    parser.add_argument("run", metavar="RUN_FOLDER", type=Path, help="folder of a dino train run")
    parser.add_argument("--output", metavar="FILE", type=Path, default=None,
                        help=f"PNG to write (default: RUN_FOLDER/{PLOT_NAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    read_records(args.run)  # a folder without a log is refused before anything else
    output = usable_output_file(args.output or args.run / PLOT_NAME, args.overwrite)
    print(f"wrote {plot_run(args.run, output)}")
    return 0
