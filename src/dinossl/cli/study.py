"""``dino study``: train variants of one configuration side by side and report them."""

from __future__ import annotations

import argparse
import os
import shlex

import yaml

from dinossl.cli.common import DEVICE_HELP, HelpFormatter
from dinossl.config.merge import read_yaml_mapping
from dinossl.errors import ConfigError
from dinossl.outputs import check_writable
from dinossl.runtime.folder_lock import folder_lock
from dinossl.study import (
    check_figure_dependencies,
    load_study,
    run_study,
    study_names,
    variant_configs,
)
from dinossl.train.preemption import requeue_exit_status, signal_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", formatter_class=HelpFormatter,
        help="train variants of one configuration (e.g. the paper's ablations) and report them side by side",
        description="Train every variant of a study in its own run folder under the output folder, then write "
        "study.md (k-NN, teacher entropy and KL at the end, collapse verdict, images/s, peak memory per variant), "
        "study.json and study.png (entropy and KL over training as the paper's Fig. 7, k-NN per epoch as its "
        "Fig. 6). Rerunning the same command resumes: finished variants are skipped. Under torchrun every "
        "variant uses all processes, or with --parallel each process trains its share of the variants alone. "
        f"Shipped studies: {', '.join(study_names())} (see --list).",
    )
    parser.add_argument("study", nargs="?", metavar="STUDY", help="a shipped study's name or a study YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                        help="training settings for every variant, applied over the study's base and under each "
                        "variant's own overrides (e.g. train.epochs=10 train.batch_size_per_process=64)")
    parser.add_argument("--config", metavar="FILE", help="training config YAML merged over the study's base")
    parser.add_argument("--output", metavar="FOLDER", default=None,
                        help="study folder; one holding the same study is resumed, anything else is refused "
                        "(default: study-<name>)")
    parser.add_argument("--device", default=argparse.SUPPRESS, help=f"train.device of every variant: {DEVICE_HELP}")
    parser.add_argument("--parallel", action="store_true",
                        help="under torchrun: each process trains its share of the variants alone instead of "
                        "all processes training each variant together")
    parser.add_argument("--no-figure", action="store_true", help="no study.png (it needs matplotlib, extra viz)")
    parser.add_argument("--no-progress", action="store_true", help="shortcut for train.progress_bar=false")
    parser.add_argument("--list", action="store_true", help="list the shipped studies and their variants, then exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print every variant's resolved configuration as YAML and exit (nothing is written)")
    parser.set_defaults(func=run)


def _list() -> str:
    lines = []
    for name in study_names():
        study = load_study(name)
        lines.append(f"{name}: {study.description.split('. ')[0]}")
        lines += [f"  {v.name}: {v.label}" for v in study.variants]
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> str:
    parts = ["dino", "study", args.study, *getattr(args, "overrides", [])]
    if args.config:
        parts += ["--config", args.config]
    if hasattr(args, "device"):
        parts += ["--device", args.device]
    if args.parallel:
        parts.append("--parallel")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(_list())
        return 0
    if args.study is None:
        raise ConfigError(f"name a study ({', '.join(study_names())}) or a study YAML file; --list shows them")
    study = load_study(args.study)
    overrides = list(getattr(args, "overrides", []))
    if hasattr(args, "device"):
        overrides.append(f"train.device={args.device}")
    if args.no_progress:
        overrides.append("train.progress_bar=false")
    if args.config:
        read_yaml_mapping(args.config)  # a missing or broken file: one line before anything else
    configs = variant_configs(study, args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump({v.name: c.to_dict() for v, c in configs}, sort_keys=False), end="")
        return 0
    if not args.no_figure:
        check_figure_dependencies()
    output = args.output or f"study-{study.name}"
    with folder_lock(check_writable(output), "dino study"):  # RANK 0 holds it; each variant's run locks its own
        outcome = run_study(study, configs, output, _command(args), parallel=args.parallel,
                            figure=not args.no_figure)
    if outcome.preempted_by:
        print(f"study {study.name}: stopped on {signal_name(outcome.preempted_by)}; the interrupted variant is "
              "checkpointed: run the same command to resume")
        return requeue_exit_status(outcome.preempted_by)
    if outcome.written:
        print(f"study {study.name}: {', '.join(str(p) for p in outcome.written)}")
    elif args.parallel:
        print(f"study {study.name}: process {os.environ.get('RANK', '0')} is done; the last process to finish "
              "writes the report (or run the same command again once every variant is finished)")
    return 0
