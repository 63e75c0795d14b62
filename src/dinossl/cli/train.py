"""``dino train``: pretrain (or resume) a backbone with DINO."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

import yaml

from dinossl.cli.common import DEVICE_HELP, HelpFormatter
from dinossl.config import DEFAULT_PRESET, file_preset, load_config, preset_names
from dinossl.errors import ConfigError
from dinossl.eval.classification.knn_monitor import FOLDER_KNN_METRIC, KNN_METRIC, KnnDuringTraining
from dinossl.eval.training_monitors import training_monitors
from dinossl.train import train
from dinossl.train.preemption import requeue_exit_status, signal_name
from dinossl.train.trainer import RunInterrupted

log = logging.getLogger("dinossl")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", formatter_class=HelpFormatter,
        help="pretrain a backbone with DINO (no argument: a small ViT on the built-in CIFAR-10 sample)",
        description="Pretrain with DINO. An output folder that holds a checkpoint of the same configuration is "
        "resumed. Settings: --preset, then --config YAML, then KEY=VALUE overrides (e.g. optim.base_lr=1e-3).",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                        help="config overrides, section.field=value (e.g. optim.base_lr=1e-3)")
    parser.add_argument("--preset", choices=preset_names(), default=argparse.SUPPRESS,
                        help=f"named recipe (default: {DEFAULT_PRESET}, unless --config names one)")
    parser.add_argument("--config", metavar="FILE", help="YAML file with config sections (and optionally preset:)")
    parser.add_argument("--data", metavar="FOLDER", default=argparse.SUPPRESS,
                        help="image folder, class subfolders or flat (default: the built-in sample; data.path)")
    parser.add_argument("--output", metavar="FOLDER", default=None,
                        help="run folder; one holding a checkpoint of the same configuration is resumed, one of "
                        "another run is refused (default: dino-<preset>)")
    parser.add_argument("--epochs", type=int, default=argparse.SUPPRESS, help="train.epochs (default: the preset's)")
    parser.add_argument("--device", default=argparse.SUPPRESS, help=f"train.device: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="train.seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="shortcut for train.progress_bar=false")
    parser.add_argument("--init-from", metavar="WEIGHTS", default=argparse.SUPPRESS,
                        help="initialise the student backbone from released weights (default: random init)")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N", default=argparse.SUPPRESS,
                        help="end this invocation after N more epochs (resumable; e.g. for time-limited jobs)")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume even if images were added to or removed from the data folder since the "
                        "checkpoint (the unfinished epoch restarts in the new data's order); without it such a "
                        "resume stops")
    parser.epilog = ("On SIGTERM or SIGUSR1 (a cluster's preemption or time-limit warning) the step in flight is "
                     "finished and checkpointed and the command exits with status 128 + the signal's number "
                     "(143, 138); run the same command to resume from that step. Exit status 2: bad input.")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and exit (nothing is written)")
    parser.set_defaults(func=run)


def _resume_command(args: argparse.Namespace) -> str:
    """How to resume: the same command (under torchrun: the same launch)."""
    command = shlex.join(["dino", *getattr(args, "argv", ["train"])])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"to resume, launch the same torchrun job again ({command} in each process)"
    return f"to resume, run: {command}"


def run(args: argparse.Namespace) -> int:
    updates: dict = {}
    if hasattr(args, "data"):
        updates["data"] = {"path": args.data}
    shortcuts = {"epochs": getattr(args, "epochs", None), "device": getattr(args, "device", None),
                 "seed": getattr(args, "seed", None), "progress_bar": False if args.no_progress else None}
    updates["train"] = {key: value for key, value in shortcuts.items() if value is not None}
    preset = getattr(args, "preset", None) or (file_preset(args.config) if args.config else None) or DEFAULT_PRESET
    config = load_config(preset=preset, yaml_path=args.config, overrides=getattr(args, "overrides", []),
                         updates=updates)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    output = args.output or f"dino-{preset}"
    stop_after = getattr(args, "stop_after_epochs", None)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after-epochs: must be >= 1, got {stop_after}")
    try:
        result = train(config, output, init_from=getattr(args, "init_from", None), stop_after_epochs=stop_after,
                       monitors=training_monitors(config, output), allow_data_change=args.allow_data_change)
    except RunInterrupted as stop:
        print(f"dino train: interrupted; {stop.where}; {_resume_command(args)}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 speaks; each rank exits alike
        return requeue_exit_status(result.preempted_by) if result.preempted_by else 0
    t = config.train
    if (t.knn_at_end or t.knn_every) and config.data.path is not None and t.val_data is None:
        print(f"train.knn_at_end / knn_every use the built-in sample's labels: set train.val_data=FOLDER (train/ and "
              f"val/ with class subfolders) for k-NN on your own data, or run `dino eval knn` for {config.data.path}")
    if result.preempted_by:
        print(f"stopped on {signal_name(result.preempted_by)} after step {result.steps_done}: the checkpoint in "
              f"{result.output_dir} holds it; run the same command to resume")
        return requeue_exit_status(result.preempted_by)
    for record in result.reports:
        if record.get("metric") in (KNN_METRIC, FOLDER_KNN_METRIC):
            print(KnnDuringTraining.summary(record))
    if result.epochs_done < config.train.epochs:
        print(f"stopped after epoch {result.epochs_done} of {config.train.epochs}; run the same command to resume")
    print(f"run folder: {result.output_dir}")
    return 0
