"""The order of the device path's work on a CUDA device: decode and cut a batch on a side stream,
then hand its crops to the training stream.

torchvision's CUDA ``decode_jpeg`` allocates its outputs on the caller's current stream and
writes them from a private stream (nvJPEG's hardware engine does not even honour that stream's
order). PyTorch's caching allocator hands a freed block to the next allocation on the same
stream at once, trusting stream order; so the decoder can be given a block that kernels queued
on the caller's stream have not finished reading, and overwrite it: wrong pixels elsewhere, no
error (pytorch/vision pull request 9606, meta-pytorch/torchcodec pull request 1634).

:class:`SideStreamBatches` defends against it:

1. Each batch is decoded and cut on a side stream of the package's own, which is synchronised
   (the host waits for it) just before the decode, so no queued kernel still reads a block the
   decoder may be handed. The side stream holds only the previous batch's cutting, which the
   training step of that batch already waited for, so the wait is normally empty; it costs one
   host-device round trip per batch (microseconds). Synchronising the training stream instead
   would make the host wait for the whole queued training step.
2. After the cutting, an event is recorded on the side stream and the training stream waits
   for it (``wait_event``: the GPU orders the work, the host does not wait), so the step never
   reads crops that are not finished. (torchvision itself makes the side stream wait for its
   decoder, and its decode returns only once the decoder's stream is done.)
3. The crops were allocated on the side stream but are read on the training stream:
   ``record_stream`` tells the allocator so, and their blocks are not given to a later
   side-stream allocation (the next decode among them) before the training stream has passed
   the point where they were handed over. It costs one event per tensor when it is freed.
   Holding references instead would mean guessing when the step is done with them.
   The decoded images need neither: they are used on the side stream only, their last use is
   queued before they are dropped, and no block they free can reach the decoder before the
   next batch's synchronisation (1).

Preparing on a side stream also lets the cutting of the next batch run on the GPU while the
current training step does: the loader prepares batch k + 1 when the trainer asks for it,
after queuing step k, and the trainer's step k + 1 waits only for that batch's event.
On a CPU none of this applies: the work runs in order where it is called.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


class SideStreamBatches:
    """Runs each batch's device work on a side stream of a CUDA ``device`` and hands its results
    to the caller's stream (see the module's notes for the order and why). ``cuda``: the
    ``torch.cuda`` module, or an object with its ``Stream``, ``Event``, ``stream`` and
    ``current_stream`` (a test's recorder)."""

    def __init__(self, device: torch.device, cuda: Any = torch.cuda) -> None:
        self.device, self.cuda = device, cuda
        self.stream = cuda.Stream(device=device)

    def prepare(self, decode: Callable[[], T], cut: Callable[[T], Sequence[torch.Tensor]]) -> Sequence[torch.Tensor]:
        """``cut(decode())`` on the side stream, after waiting for the side stream's earlier
        work; the returned tensors are ready for the caller's stream to use."""
        consumer = self.cuda.current_stream(self.device)
        with self.cuda.stream(self.stream):
            self.stream.synchronize()  # (1) no queued kernel reads a block the decoder may get
            tensors = cut(decode())
            done = self.cuda.Event()
            done.record(self.stream)
        consumer.wait_event(done)  # (2) the step starts after the crops exist
        for tensor in tensors:
            tensor.record_stream(consumer)  # (3) not reused by the side stream before the step used it
        return tensors
