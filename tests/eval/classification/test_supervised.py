"""Top-1/top-5 counting of the supervised evaluations: right counts, no host sync per batch."""

from __future__ import annotations

import pytest
import torch

from dinossl.eval.classification.supervised import accuracy, topk_hits
from tests.host_sync import HostSyncRecorder


def _logits_and_labels(device: str = "cpu"):
    # 4 samples, 6 classes: class scores descending in the order given per row.
    orders = [[2, 0, 1, 3, 4, 5], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 2, 3, 4, 5, 0]]
    logits = torch.zeros(4, 6, device=device)
    for row, order in enumerate(orders):
        for rank, cls in enumerate(order):
            logits[row, cls] = 6.0 - rank
    labels = torch.tensor([2, 3, 0, 0], device=device)  # rank 1, rank 4, rank 6, rank 6
    return logits, labels


def test_topk_hits_counts_by_hand():
    logits, labels = _logits_and_labels()
    hits = topk_hits(logits, labels)
    assert hits.dtype == torch.float64 and hits.tolist() == [1.0, 2.0, 4.0]


def test_topk_hits_reaches_no_host_sync():
    logits, labels = _logits_and_labels()
    with HostSyncRecorder() as recorder:
        topk_hits(logits, labels)
    assert recorder.calls == []


def _hits_with_a_host_count(logits, labels):
    """The former count: a tensor built from a Python int on the labels' device."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top == labels[:, None]
    return torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum(),
                        torch.tensor(labels.shape[0], device=labels.device)]).double()


def test_the_recorder_sees_the_former_count():
    logits, labels = _logits_and_labels()
    with HostSyncRecorder(__file__) as recorder:
        former = _hits_with_a_host_count(logits, labels)
    assert [call.split()[-1] for call in recorder.calls] == ["tensor"]
    assert former.tolist() == topk_hits(logits, labels).tolist()


def test_accuracy_over_batches_in_percent():
    logits, labels = _logits_and_labels()
    batches = [(logits[:2], labels[:2]), None, (logits[2:], labels[2:])]
    result = accuracy(lambda x: x, batches, torch.device("cpu"))
    assert result == pytest.approx({"top1": 25.0, "top5": 50.0})


@pytest.mark.gpu
def test_topk_hits_on_cuda_does_not_synchronise():
    logits, labels = _logits_and_labels("cuda")
    topk_hits(logits, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hits = topk_hits(logits, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert hits.tolist() == [1.0, 2.0, 4.0]
