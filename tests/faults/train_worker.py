"""Run `dino train` in a child process, optionally with a fault planted inside a checkpoint write.

Usage: python train_worker.py FAULT TRAIN_ARGS...
FAULT: ok | in_write:K:F (in the K-th checkpoint write, after the data reached the temporary
       file, cut that file to fraction F of its length and SIGKILL this process) |
       at_rename:K:N (in the K-th checkpoint write, SIGKILL right after the N-th rename: 1 = the
       SHA-256 record listing both digests, 2 = the checkpoint, 3 = the final record)
"""

import os
import signal
import sys
from pathlib import Path

import torch

from dinossl import safe_files
from dinossl.cli import main


def plant(fault: str) -> None:
    if fault == "ok":
        return
    kind, k, arg = fault.split(":")
    writes = {"n": 0}
    original_write_atomic = safe_files.write_atomic
    real_replace = os.replace

    def write_atomic(path, write, digest=False):
        if Path(path).name != "checkpoint.pth":
            return original_write_atomic(path, write, digest)
        writes["n"] += 1
        if writes["n"] != int(k):
            return original_write_atomic(path, write, digest)
        if kind == "in_write":
            def cut(tmp):
                write(tmp)
                size = os.path.getsize(tmp)
                os.truncate(tmp, int(size * float(arg)))
                os.kill(os.getpid(), signal.SIGKILL)
            return original_write_atomic(path, cut, digest)
        renames = {"n": 0}

        def replace(src, dst):
            real_replace(src, dst)
            renames["n"] += 1
            if renames["n"] == int(arg):
                os.kill(os.getpid(), signal.SIGKILL)

        safe_files.os.replace = replace
        try:
            return original_write_atomic(path, write, digest)
        finally:
            safe_files.os.replace = real_replace

    safe_files.write_atomic = write_atomic
    # the trainer reaches write_atomic through dinossl.train.checkpoint's import
    from dinossl.train import checkpoint

    checkpoint.write_atomic = write_atomic


if __name__ == "__main__":
    torch.set_num_threads(1)
    plant(sys.argv[1])
    sys.exit(main(["train", *sys.argv[2:]]))
