"""One rank of a torchrun-style gloo job that takes an output folder's lock.

Usage: python lock_worker.py FOLDER (with torchrun's environment). Prints ``rank R holds: B`` on
stderr (B: whether this process holds the lock file) and exits 0, or exits with the CLI's
status and line when the folder is in use.
"""

import os
import sys

from dinossl.errors import DinoError
from dinossl.outputs import LOCK_NAME
from dinossl.runtime.distributed import barrier, init_distributed, shutdown_distributed
from dinossl.runtime.folder_lock import LockRecord, folder_lock

if __name__ == "__main__":
    folder = sys.argv[1]
    ctx = init_distributed("cpu", 60)
    status = 0
    try:
        with folder_lock(folder, "lock test", ctx):
            barrier()
            record = LockRecord.parse(open(os.path.join(folder, LOCK_NAME), "rb").read())
            print(f"rank {ctx.rank} holds: {record is not None and record.pid == os.getpid()}", file=sys.stderr)
            barrier()
    except DinoError as exc:
        if ctx.rank == 0 or not exc.same_on_all_ranks:
            print(f"rank {ctx.rank} error: {exc}", file=sys.stderr)
        status = exc.exit_status
    finally:
        shutdown_distributed()
    sys.exit(status)
