"""Files of tensors: read without running code from them, written atomically, with an
optional SHA-256 beside them.

Reading: ``.pth`` files (torch zip or legacy pickle) are unpickled with ``weights_only=True``;
safetensors files are told apart by their first bytes, whatever their suffix. The reference's
pickled ``argparse.Namespace`` (and pathlib paths) are mapped to :class:`ForeignObject`, an
inert record that never imports nor calls anything; any other global refuses the whole file
with one :class:`~dinossl.errors.CheckpointError`. A file with a ``<name>.sha256`` beside it is
read only if its digest is one the record lists (a file damaged after it was written is refused).

Writing: :func:`write_atomic` writes beside the destination and renames, so readers never see
a partial file; the file gets the permissions of any newly created file (umask), a full disk or
an output that became read-only becomes one :class:`~dinossl.errors.StorageError` naming the
problem (:func:`storage_error`), and leftovers of an
earlier, killed write to the same name are removed. With ``digest=True`` the SHA-256 record is
replaced together with the file (see :func:`write_atomic`).

This module imports nothing of dinossl but its errors: checkpoints, weights, the hub cache
and evaluation results all build on it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional

import torch
from safetensors.torch import load_file

from dinossl.errors import CheckpointError, StorageError

# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

DIGEST_SUFFIX = ".sha256"
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_REFUSED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)  # the output stopped accepting writes


def temporary_name_pattern(path: Path) -> str:
    """The glob of the temporary files :func:`write_atomic` makes for ``path``."""
    return f".{path.name}.*.tmp"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete what a killed :func:`write_atomic` to ``path`` (or to its digest record) left
    behind; returns the removed files."""
    path = Path(path)
    removed = []
    for target in (path, digest_path(path)):
        for leftover in target.parent.glob(temporary_name_pattern(target)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(count: Optional[int]) -> str:
    if count is None:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


def storage_error(path: Path, exc: BaseException, existed: bool) -> Optional[StorageError]:
    """A StorageError for a write to ``path`` that failed because of where it writes: no space
    (ENOSPC, a quota, torch's zip writer failing mid-file), a filesystem that became read-only,
    a permission taken away; None for any other failure. ``existed``: ``path`` was there before
    the write (and is kept)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    torch_writer = isinstance(exc, RuntimeError) and ("inline_container" in text or "file write failed" in text)
    if code not in (*_SPACE_ERRNOS, *_REFUSED_ERRNOS) and not torch_writer:
        return None
    kept = f"the previous {path.name} is intact" if existed else f"nothing was written to {path}"
    if code in _REFUSED_ERRNOS:
        reason = "its filesystem is read-only" if code == errno.EROFS else "permission denied"
        return StorageError(f"could not write {path}: {reason}; {kept}. Make the folder writable again (or choose "
                            "another output folder) and run the same command to resume")
    reason = "no space left on the device" if code in (errno.ENOSPC, None) else os.strerror(code)
    return StorageError(f"could not write {path}: {reason} ({_size(_free_bytes(path.parent))} free on its "
                        f"filesystem); {kept}. Free some space or choose another output folder")


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    """A temporary file in ``path``'s folder, removed unless it was renamed away."""
    remove_stale_temporaries(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _finish(tmp: str) -> None:
    """Give ``tmp`` a new file's permissions and push it to the disk before it is renamed."""
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())


def write_atomic(path: str | Path, write: Callable[[str], None], digest: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    With ``digest``, ``<name>.sha256`` (``sha256sum`` format) records the new file's digest. The
    two files are replaced in three renames — the record listing the new and the current digest,
    the file, then the record listing the new digest alone — so that at every instant the record
    lists the digest of the file in place: a kill between two renames never makes an intact
    file look damaged.
    """
    path = Path(path)
    existed = path.exists()
    try:
        with _temporary_beside(path) as tmp:
            write(tmp)
            _finish(tmp)
            if not digest:
                os.replace(tmp, path)
                return
            new = file_sha256(tmp)
            record = digest_path(path)
            current = _current_digests(path, record, existed)
            _write_record(record, path.name, [new, *[d for d in current if d != new]])
            os.replace(tmp, path)
            _write_record(record, path.name, [new])
    except (OSError, RuntimeError) as exc:
        error = storage_error(path, exc, existed)
        if error is not None:
            raise error from exc
        raise


def _current_digests(path: Path, record: Path, existed: bool) -> list[str]:
    """The digest of the file in place, as far as the record tells (hashing the file only when
    there is no record, or one left listing two digests by an interrupted write)."""
    if not existed:
        return []
    listed = recorded_digests(record) if record.is_file() else []
    if len(listed) == 1:
        return listed
    actual = file_sha256(path)
    return [actual] if actual in listed or not listed else listed


def _write_record(record: Path, name: str, digests: list[str]) -> None:
    text = "".join(f"{value}  {name}\n" for value in digests)
    with _temporary_beside(record) as tmp:
        Path(tmp).write_text(text)
        _finish(tmp)
        os.replace(tmp, record)


# ---------------------------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------------------------


def digest_path(path: str | Path) -> Path:
    """Where the SHA-256 record of ``path`` lives: ``<name>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_digests(record: str | Path) -> list[str]:
    """The digests a ``.sha256`` record lists (``sha256sum`` lines); CheckpointError if it is
    not such a record."""
    record = Path(record)
    try:
        lines = [line.split() for line in record.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{record}: not a readable SHA-256 record ({exc})") from exc
    digests = [parts[0].lower() for parts in lines if parts]
    if not digests or any(len(d) != 64 or any(c not in "0123456789abcdef" for c in d) for d in digests):
        raise CheckpointError(f"{record} is not a SHA-256 record (expected lines '<64 hex digits>  <name>')")
    return digests


def verify_digest(path: str | Path) -> bool:
    """Check ``path`` against the ``.sha256`` record beside it; False when there is none.

    Raises CheckpointError when the file's digest is not one the record lists: the file changed
    after it was written (a damaged disk, a partial copy), and its tensors must not be used.
    """
    path = Path(path)
    record = digest_path(path)
    if not record.is_file():
        return False
    expected = recorded_digests(record)
    actual = file_sha256(path)
    if actual not in expected:
        raise CheckpointError(
            f"{path} is damaged: its SHA-256 is {actual[:16]}..., but {record.name} recorded {expected[0][:16]}... "
            "when it was written; refusing to load it (restore both files from a copy, or remove them to start over)"
        )
    return True


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class ForeignObject:
    """Inert stand-in for an object of an allowed foreign class found in a checkpoint.

    Unpickling creates it instead of the real class: it stores the constructor arguments and
    the pickled state and does nothing else, so no code of the original class ever runs.
    """

    foreign_name: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> "ForeignObject":
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any) -> None:  # REDUCE calls cls(*args): keep it inert
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def fields(self) -> dict[str, Any]:
        """The object's pickled attributes (an argparse.Namespace's arguments), or {}."""
        state = self.state[0] if isinstance(self.state, tuple) and self.state else self.state
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"ForeignObject({self.foreign_name}, args={self.args!r}, state={self.state!r})"


# Classes whose pickles appear in training checkpoints (the reference's ``args``) and that are
# read as ForeignObject records. Anything else outside torch's weights_only set is refused.
INERT_GLOBALS: tuple[str, ...] = (
    "argparse.Namespace",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "pathlib._local.PosixPath",
    "pathlib._local.WindowsPath",
)
_STAND_INS = [
    (type(name.rsplit(".", 1)[1], (ForeignObject,), {"foreign_name": name}), name) for name in INERT_GLOBALS
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a pickle that needs more than tensors and plain data."""
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) format: only the unpickler's message is available
        names = []
    if names:
        what = f"it would import {', '.join(sorted(set(names)))}"
    else:  # torch's message starts with advice to retry unsafely: keep only the reason
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
    return CheckpointError(
        f"{path}: refused to unpickle ({what}); loading it could run code, and only tensors and "
        "plain data are read (torch.load weights_only=True)"
    )


# A torch zip archive starts with a zip local-file header; a legacy (pre-1.6) torch file with
# the pickled magic number torch.save writes first (protocol 2, long 0x1950a86a20f9469cfc6c).
_ZIP_HEADER = b"PK\x03\x04"
_LEGACY_TORCH_HEADER = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _sniff(path: Path) -> Optional[str]:
    """'torch' (zip or legacy torch.save), 'safetensors' or None, from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_HEADER))
    if head.startswith(_ZIP_HEADER) or head == _LEGACY_TORCH_HEADER:
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    return None


def read_weights_file(path: str | Path) -> Any:
    """The object stored in ``path`` (safetensors: dict of tensors; else torch.save data),
    read without running code from the file; the reference's ``args`` become ForeignObject.
    A ``<name>.sha256`` record beside the file is checked first (:func:`verify_digest`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    verify_digest(path)
    kind = _sniff(path)
    if kind is None:
        raise CheckpointError(f"{path}: not a PyTorch (.pth) nor a safetensors file")
    if kind == "safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    try:
        # An open file, not the path: torch routes paths ending in .safetensors to safetensors.
        with open(path, "rb") as handle, torch.serialization.safe_globals(_STAND_INS):
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch or safetensors file ({_first_line(exc)})") from exc
