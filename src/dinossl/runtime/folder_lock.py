"""One process per output folder: an exclusive lock that every command writing a resumable
folder (a training run, a study, a dedupe index, a probe's checkpoint, an embedding) holds
while it works.

The lock is the file ``.dinossl.lock`` inside the folder (:data:`dinossl.outputs.LOCK_NAME`). Its
holder

* holds a POSIX record lock on it (``fcntl``, ``lockf``), which the kernel — or, on NFS and
  Lustre mounted with locking, the lock manager — releases when the process ends, however it ends;
* writes into it who holds it: host, pid, command, start time, SLURM job and restart count,
  and a heartbeat time it rewrites every :data:`HEARTBEAT_S` seconds;
* removes the file when it is done;
* never opens the file a second time while it holds it (closing any descriptor of a file drops
  the process's record locks on it).

A second process that finds the folder locked stops with :class:`FolderInUse`, naming the
holder's pid and host. A lock file left by a process that ended without removing it (``kill -9``,
a crash, a node that went down) is taken over with a warning when the holder is known to be gone:
on the same host, when the record lock is free (or, where the filesystem has no record locks,
when its pid no longer runs); from another host, where a pid tells nothing, when its heartbeat
is older than :data:`STALE_AFTER_S` seconds. A SLURM job requeued onto the same folder (same
``SLURM_JOB_ID``, another ``SLURM_RESTART_COUNT``) takes over its own earlier lock at once.
Under torchrun only rank 0 holds the lock; every rank learns whether it was granted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from dinossl.errors import DinoError
from dinossl.outputs import LOCK_NAME
from dinossl.runtime.distributed import DistContext, raise_together

log = logging.getLogger("dinossl")

HEARTBEAT_S = 60.0  # how often a holder rewrites its heartbeat time
STALE_AFTER_S = 600.0  # a lock from another host without heartbeat for this long is taken over

_HELD: set[Path] = set()  # folders this process holds (record locks do not exclude their own process)
_HELD_GUARD = threading.Lock()


class FolderInUse(DinoError):
    """Another process holds the output folder's lock."""


@dataclass
class LockRecord:
    """Who holds a folder: what the lock file says."""

    host: str
    pid: int
    command: str
    started: float
    heartbeat: float
    slurm_job: Optional[str] = None
    slurm_restart: Optional[str] = None

    @classmethod
    def mine(cls, command: str) -> "LockRecord":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), command, now, now, os.environ.get("SLURM_JOB_ID"),
                   os.environ.get("SLURM_RESTART_COUNT", "0") if "SLURM_JOB_ID" in os.environ else None)

    @classmethod
    def parse(cls, text: bytes) -> Optional["LockRecord"]:
        """The record in a lock file's bytes; None when empty or not a record."""
        try:
            fields = json.loads(text.decode())
            return cls(str(fields["host"]), int(fields["pid"]), str(fields.get("command", "?")),
                       float(fields["started"]), float(fields["heartbeat"]), fields.get("slurm_job"),
                       fields.get("slurm_restart"))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def encode(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"`{self.command}` (pid {self.pid} on host {self.host}{job}, since {started})"

    def earlier_run_of_this_slurm_job(self) -> bool:
        """Written by an earlier start of the SLURM job this process belongs to (a requeue)."""
        job = os.environ.get("SLURM_JOB_ID")
        return (job is not None and self.slurm_job == job
                and self.slurm_restart != os.environ.get("SLURM_RESTART_COUNT", "0"))


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _try_record_lock(fd: int) -> Optional[bool]:
    """True: locked; False: another process holds it; None: the filesystem offers no record locks."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise


def _read(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


class FolderLock:
    """The exclusive lock of one output folder (see the module docstring); a context manager.

    ``acquire`` creates the folder when it does not exist; ``release`` removes the lock file, and
    the folder too when this lock created it and nothing else was written there.
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._record: Optional[LockRecord] = None
        self._created_folder = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._key: Optional[Path] = None

    def acquire(self) -> None:
        """Take the lock, or raise FolderInUse naming its holder."""
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder.resolve()
        with _HELD_GUARD:
            if key in _HELD:
                raise FolderInUse(f"output folder {self.folder} is in use by `{self.command}` in this same process "
                                  f"(pid {os.getpid()} on host {socket.gethostname()})")
            _HELD.add(key)
        self._key = key
        try:
            self._fd = self._take()
        except BaseException:
            self._forget()
            self._remove_created_folder()
            raise
        self._record = LockRecord.mine(self.command)
        self._write(self._record)
        self._thread = threading.Thread(target=self._beat, name="dinossl-folder-lock", daemon=True)
        self._thread.start()

    def _take(self) -> int:
        """An open descriptor of the lock file, locked (or unlockable) and ours to write."""
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = _try_record_lock(fd)
                if locked is not False and not self._still_in_place(fd):
                    os.close(fd)  # its holder removed the file as we opened it: try the new one
                    continue
                record = LockRecord.parse(_read(fd))
                if record is None and locked is False:  # its holder is writing its record right now
                    os.close(fd)
                    time.sleep(0.05)
                    continue
                self._judge(record, locked)
                return fd
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
        raise FolderInUse(f"output folder {self.folder} is in use: {self.path} is locked by another process that "
                          "wrote no record in it")

    def _still_in_place(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _judge(self, record: Optional[LockRecord], locked: Optional[bool]) -> None:
        """Return when this process may take the lock (warning when it takes over another's);
        raise FolderInUse when the recorded holder may still run."""
        if record is None:
            return  # a new lock file, or one cut short while it was written
        here = socket.gethostname()
        if record.earlier_run_of_this_slurm_job():
            log.warning("%s: taking over the lock of an earlier run of this SLURM job (%s, restart %s -> %s)",
                        self.folder, record.describe(), record.slurm_restart, os.environ.get("SLURM_RESTART_COUNT"))
            return
        if locked is False:
            raise self._refusal(record)
        if record.host == here:
            if locked is None and _pid_runs(record.pid):
                raise self._refusal(record)
            log.warning("%s: taking over the lock left by %s, which no longer runs", self.folder, record.describe())
            return
        age = time.time() - record.heartbeat
        if age <= STALE_AFTER_S:
            raise self._refusal(record, f"; its last heartbeat was {age:.0f} s ago, and a lock without a heartbeat for "
                                        f"{STALE_AFTER_S:.0f} s is taken over")
        log.warning("%s: taking over the lock of %s, whose last heartbeat was %.0f s ago", self.folder,
                    record.describe(), age)

    def _refusal(self, record: LockRecord, note: str = "") -> FolderInUse:
        return FolderInUse(f"output folder {self.folder} is in use by {record.describe()}{note}; wait until it ends "
                           f"or choose another output folder (if that process is gone, remove {self.path})")

    def _write(self, record: LockRecord) -> None:
        data = record.encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            record = self._record
            if record is None or self._fd is None:
                return
            record.heartbeat = time.time()
            with contextlib.suppress(OSError):  # a missed heartbeat must not stop the run
                self._write(record)

    def release(self) -> None:
        """Remove the lock file, then drop the record lock (in that order, so that a process
        waiting on the old file sees it gone and retries on a new one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self._still_in_place(self._fd):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._record = None
        self._forget()
        self._remove_created_folder()

    def _forget(self) -> None:
        with _HELD_GUARD:
            if self._key is not None:
                _HELD.discard(self._key)
        self._key = None

    def _remove_created_folder(self) -> None:
        if self._created_folder:
            with contextlib.suppress(OSError):  # not empty: something was written, keep it
                self.folder.rmdir()
            self._created_folder = False

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_ALONE = DistContext(0, 1, 0, torch.device("cpu"))


def _holds_lock(ctx: Optional[DistContext]) -> bool:
    if ctx is not None:
        return ctx.is_main
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, ctx: Optional[DistContext] = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the body (the main process only: rank 0 under torchrun, or
    ``RANK`` 0 when ``ctx`` is None). With a distributed ``ctx`` every rank learns whether rank
    0 got it (a collective), and all raise FolderInUse together when it did not."""
    lock = FolderLock(folder, command) if _holds_lock(ctx) else None
    error: Optional[FolderInUse] = None
    if lock is not None:
        try:
            lock.acquire()
        except FolderInUse as exc:
            error = exc
    try:
        raise_together(error, ctx if ctx is not None else _ALONE, FolderInUse)
    except BaseException:
        if lock is not None and error is None:  # the collective failed: a peer is gone
            lock.release()
        raise
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
