"""The float16 feature store: written as it goes, resumed after an interrupted run with the same
result as an uninterrupted one, never reused for another identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dinossl.inference import BackboneHarness
from dinossl.eval.retrieval.dedupe import DedupeSettings, index_images
from dinossl.eval.retrieval.feature_store import FeatureStore, StoreMismatch
from dinossl.weights import load_backbone


def test_rows_unreadable_and_progress_survive_reopening(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"weights": "w"}, rows=5, dim=3)
    store.write([0, 2], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), [(1, "corrupt")], done=3)
    again = FeatureStore.open(tmp_path / "s", {"weights": "w"})
    assert again.done == 3 and not again.complete and again.unreadable == {1: "corrupt"}
    assert again.features.dtype == np.float16 and again.features.shape == (5, 3)
    assert again.features[2].tolist() == [0, 1, 0]
    assert again.readable_rows().tolist() == [0, 2]
    with pytest.raises(StoreMismatch, match="other weights"):
        FeatureStore.open(tmp_path / "s", {"weights": "other"})


class Interrupted(Exception):
    pass


class StopsAfter(nn.Module):
    """Wraps a backbone; raises after ``calls`` forward passes (a run killed mid-way) and counts images."""

    def __init__(self, inner: nn.Module, calls: int | None = None) -> None:
        super().__init__()
        self.inner, self.calls, self.images = inner, calls, 0
        self.patch_size = inner.patch_size
        self.num_prefix_tokens = inner.num_prefix_tokens

    def intermediate_layers(self, x, n=1):
        if self.calls is not None:
            if self.calls == 0:
                raise Interrupted
            self.calls -= 1
        self.images += x.shape[0]
        return self.inner.intermediate_layers(x, n)


def test_an_interrupted_index_resumes_and_matches_an_uninterrupted_one(vit_weights, horse_photos, tmp_path):
    files = horse_photos[:13]
    settings = DedupeSettings(imsize=64)
    run = BackboneHarness(str(vit_weights), batch_size=3, num_workers=0, progress=False)
    vit = load_backbone(vit_weights).eval()
    identity = {"images": [str(f) for f in files], "imsize": 64}

    full, _ = index_images(StopsAfter(vit), files, tmp_path / "full", identity, settings, run, torch.device("cpu"))
    assert full.complete

    killed = StopsAfter(vit, calls=2)
    with pytest.raises(Interrupted):
        index_images(killed, files, tmp_path / "resumed", identity, settings, run, torch.device("cpu"))
    partial = FeatureStore.open(tmp_path / "resumed", identity)
    assert partial.done == 6 and killed.images == 6
    # Rows after `done` may hold anything a killed run left there: they are recomputed.
    writable = FeatureStore.open(tmp_path / "resumed", identity, writable=True)
    writable.features[6:9] = 7.0
    writable.features.flush()

    resumed_backbone = StopsAfter(vit)
    store, report = index_images(resumed_backbone, files, tmp_path / "resumed", identity, settings, run,
                                 torch.device("cpu"))
    assert resumed_backbone.images == 7 and report.resumed_from == 6 and report.computed == 7
    assert store.complete and np.array_equal(np.asarray(store.features), np.asarray(full.features))

    # A complete store is reused as is; another identity is refused unless restarting.
    again = StopsAfter(vit)
    index_images(again, files, tmp_path / "resumed", identity, settings, run, torch.device("cpu"))
    assert again.images == 0
    with pytest.raises(StoreMismatch, match="--overwrite"):
        index_images(again, files, tmp_path / "resumed", {**identity, "imsize": 96}, settings, run, torch.device("cpu"))
    store, report = index_images(again, files, tmp_path / "resumed", {**identity, "imsize": 96}, settings, run,
                                 torch.device("cpu"), restart=True)
    assert again.images == 13 and report.resumed_from == 0
