"""Files of tensors: read without running code from them, written atomically.

Reading: ``.pth`` files (torch zip or legacy pickle) are unpickled with ``weights_only=True``;
safetensors files are told apart by their first bytes, whatever their suffix. The reference's
pickled ``argparse.Namespace`` (and pathlib paths) are mapped to :class:`ForeignObject`, an
inert record that never imports nor calls anything; any other global refuses the whole file
with one :class:`~dinossl.errors.CheckpointError`.

Writing: :func:`write_atomic` writes beside the destination and renames, so readers never see
a partial file.

This module imports nothing of dinossl but its errors: checkpoints, weights, the hub cache
and evaluation results all build on it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from safetensors.torch import load_file

from dinossl.errors import CheckpointError

# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def _sniff(path: Path) -> Optional[str]:
    """'torch' (zip or legacy pickle), 'safetensors' or None, from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch zip archive / legacy pickle protocol 2+
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    return None


def read_weights_file(path: str | Path) -> Any:
    """The object stored in ``path`` (safetensors: dict of tensors; else torch.save data),
    read without running code from the file; the reference's ``args`` become ForeignObject."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    kind = _sniff(path)
    if kind is None:
        raise CheckpointError(f"{path}: not a PyTorch (.pth) nor a safetensors file")
    if kind == "safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch or safetensors file ({_first_line(exc)})") from exc
