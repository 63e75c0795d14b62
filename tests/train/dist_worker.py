"""Run `dino train` in one process of a distributed test, optionally with a planted fault.

Usage: python dist_worker.py SCENARIO TRAIN_ARGS...   (RANK, WORLD_SIZE, ... in the environment)
SCENARIO: ok | nan_on_rank1 (rank 1's loss becomes NaN on its 3rd step) |
          die_on_rank1_at_step6 (rank 1's process exits abruptly on its 6th step)
"""

import os
import sys

import torch

from dinossl.cli import main
from dinossl.objective import loss as loss_module


def plant(scenario: str) -> None:
    if os.environ.get("RANK") != "1" or scenario == "ok":
        return
    original = loss_module.DINOLoss.forward
    calls = {"n": 0}

    def faulty(self, *args, **kwargs):
        calls["n"] += 1
        loss, stats = original(self, *args, **kwargs)
        if scenario == "nan_on_rank1" and calls["n"] == 3:
            loss = loss * float("nan")
        if scenario == "die_on_rank1_at_step6" and calls["n"] == 6:
            os._exit(17)
        return loss, stats

    loss_module.DINOLoss.forward = faulty


if __name__ == "__main__":
    torch.set_num_threads(1)
    plant(sys.argv[1])
    sys.exit(main(["train", *sys.argv[2:]]))
