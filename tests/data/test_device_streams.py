"""The order of the device path's CUDA work (the decoder's stream race defence), checked with a
recorder standing in for torch.cuda: the side stream is synchronised before each decode, the
training stream waits on an event recorded after the cutting, and every crop handed over is
recorded as used by the training stream."""

from __future__ import annotations

import contextlib

import torch

from dinossl.data.device_streams import SideStreamBatches


class _Recorder:
    """torch.cuda's Stream / Event / stream / current_stream, writing what is called into ``log``."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.training = _Stream("training", self.log)
        self.events = 0

    def Stream(self, device):  # noqa: N802 - torch.cuda's name
        return _Stream("side", self.log)

    def Event(self):  # noqa: N802
        self.events += 1
        return _Event(f"event{self.events}", self.log)

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append(f"enter {stream.name}")
        yield
        self.log.append(f"leave {stream.name}")

    def current_stream(self, device):
        return self.training


class _Stream:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def synchronize(self) -> None:
        self.log.append(f"{self.name}.synchronize")

    def wait_event(self, event) -> None:
        self.log.append(f"{self.name}.wait_event({event.name})")


class _Event:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def record(self, stream) -> None:
        self.log.append(f"{self.name}.record({stream.name})")


class _Crop:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def record_stream(self, stream) -> None:
        self.log.append(f"{self.name}.record_stream({stream.name})")


def test_each_batch_is_decoded_after_a_synchronisation_and_handed_over_through_an_event():
    cuda = _Recorder()
    batches = SideStreamBatches(torch.device("cuda:0"), cuda)
    log = cuda.log
    for batch in (1, 2):
        crops = [_Crop(f"b{batch}v0", log), _Crop(f"b{batch}v1", log)]

        def decode():
            log.append(f"decode b{batch}")
            return f"images b{batch}"

        def cut(images, crops=crops):
            log.append(f"cut {images}")
            return crops

        assert batches.prepare(decode, cut) == crops
    assert log == [
        "enter side", "side.synchronize", "decode b1", "cut images b1", "event1.record(side)", "leave side",
        "training.wait_event(event1)", "b1v0.record_stream(training)", "b1v1.record_stream(training)",
        "enter side", "side.synchronize", "decode b2", "cut images b2", "event2.record(side)", "leave side",
        "training.wait_event(event2)", "b2v0.record_stream(training)", "b2v1.record_stream(training)",
    ]
