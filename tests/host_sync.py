"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode``: records the calls made by the
package's own code that make the host wait for (or copy to) a CUDA device when the tensors
live there.

On a CPU every tensor is a host tensor, so nothing actually waits; what is recorded is the
call *site*: a tensor read back to Python (``item``, ``tolist``, ``bool(t)``, ``int(t)``,
``float(t)``, formatting), a copy to the host (``cpu``, ``numpy``, ``to("cpu")``), a result
whose size depends on the data (``nonzero``, one-argument ``where``, ``masked_select``,
``unique``, boolean-mask indexing), a comparison answered on the host (``equal``) and a tensor
built from Python data (``torch.tensor``/``as_tensor``: a blocking copy from pageable memory
when its device is a GPU). Only calls whose caller is in ``src/dinossl`` (or in files named
to the recorder) count: torch's own internals (e.g. AdamW reading its host-resident step
counters) are not the package's to change, and the ``gpu``-marked tests check a whole step
with the real sync debug mode.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

PACKAGE = str(Path(__file__).resolve().parents[1] / "src" / "dinossl")
# Python-level frames of torch's own dispatch (Tensor methods written in Python).
DISPATCH_FRAMES = tuple(str(Path(torch.__file__).parent / name) for name in ("overrides.py", "_tensor.py"))

READ_BACK = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__format__, torch.Tensor.__repr__,
             torch.Tensor.cpu, torch.Tensor.numpy, torch.is_nonzero, torch.equal, torch.Tensor.equal,
             torch.Tensor.nonzero, torch.nonzero, torch.masked_select, torch.Tensor.masked_select,
             torch.unique, torch.Tensor.unique, torch.tensor, torch.as_tensor}


def _is_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in READ_BACK:
        return True
    if func is torch.where:
        return len(args) + len(kwargs) == 1  # where(condition) is nonzero
    if func is torch.Tensor.to:
        targets = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, (str, torch.device))]
        return any(torch.device(t).type == "cpu" for t in targets)
    if func is torch.Tensor.__getitem__:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


def _caller() -> Any:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(DISPATCH_FRAMES):
        frame = frame.f_back
    return frame


class HostSyncRecorder(TorchFunctionMode):
    """``with HostSyncRecorder() as recorder: ...`` then ``recorder.calls``: one
    "file:line function" entry per host-sync call site the package's code hit."""

    def __init__(self, *also_watch: str) -> None:
        """``also_watch``: more source files or folders whose calls count (e.g. a test's own
        planted code)."""
        super().__init__()
        self.watched = (PACKAGE, *also_watch)
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            frame = _caller()
            if frame is not None and frame.f_code.co_filename.startswith(self.watched):
                name = getattr(func, "__name__", str(func))
                self.calls.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {name}")
        return func(*args, **kwargs)
