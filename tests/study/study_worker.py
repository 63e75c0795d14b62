"""Run `dino study` in one process of a distributed test.

Usage: python study_worker.py STUDY_ARGS...   (RANK, WORLD_SIZE, ... in the environment)
"""

import sys

import torch

from dinossl.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(["study", *sys.argv[1:]]))
