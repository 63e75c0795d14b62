import numpy as np
import torch

from dinossl.config import CropConfig
from dinossl.data import MultiCropAugmentation, MultiCropDataset, ShardedEpochSampler, build_train_loader
from dinossl.data.images import ArrayImages


def _batches(sampler, batch):
    items = list(sampler)
    return [items[i:i + batch] for i in range(0, len(items), batch)]


def test_shards_are_disjoint_and_union_is_the_single_process_batch():
    n, batch, world = 53, 4, 3
    single = ShardedEpochSampler(n, batch * world, rank=0, world_size=1, seed=5)
    shards = [ShardedEpochSampler(n, batch, rank=r, world_size=world, seed=5) for r in range(world)]
    for s in [single, *shards]:
        s.set_epoch(2)
    assert single.steps_per_epoch == shards[0].steps_per_epoch == 53 // 12
    single_batches = _batches(single, batch * world)
    shard_batches = [_batches(s, batch) for s in shards]
    for step, whole in enumerate(single_batches):
        parts = [set(shard_batches[r][step]) for r in range(world)]
        assert set.union(*parts) == set(whole)
        assert sum(len(p) for p in parts) == len(whole)  # disjoint
    assert all(epoch == 2 for _, epoch in single_batches[0])


def test_epochs_reshuffle_with_the_seed():
    s = ShardedEpochSampler(20, 5, seed=1)
    s.set_epoch(0)
    first = [i for i, _ in s]
    s.set_epoch(1)
    second = [i for i, _ in s]
    assert sorted(first) == sorted(second) == list(range(20)) and first != second
    again = ShardedEpochSampler(20, 5, seed=1)
    assert [i for i, _ in again] == first


def test_crops_do_not_depend_on_worker_count_and_are_distinct():
    pixels = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    source = ArrayImages(pixels, np.arange(12) % 3, ["a", "b", "c"])
    ds = MultiCropDataset(source, MultiCropAugmentation(CropConfig(global_size=32, local_size=16, num_local=1)), 3)
    results = []
    for workers in (0, 2):
        sampler = ShardedEpochSampler(12, 4, seed=0)
        loader = build_train_loader(ds, sampler, 4, workers, pin_memory=False)
        results.append([b[0] for b in loader])
    for a, b in zip(*results):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    flat = torch.cat([b[0] for b in results[0]])  # 12 first global crops of 12 different images
    assert len({tuple(x.flatten()[:50].tolist()) for x in flat}) == 12


def test_an_epoch_started_at_a_step_yields_the_rest_of_that_epoch():
    whole = ShardedEpochSampler(40, 4, rank=1, world_size=2, seed=3)
    whole.set_epoch(5)
    rest = ShardedEpochSampler(40, 4, rank=1, world_size=2, seed=3)
    rest.set_epoch(5, start_step=3)
    assert list(rest) == list(whole)[3 * 4:] and len(rest) == len(whole) - 3 * 4


def test_the_loader_does_not_draw_from_the_global_rng():
    pixels = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    ds = MultiCropDataset(ArrayImages(pixels, np.zeros(8), ["a"]),
                          MultiCropAugmentation(CropConfig(global_size=32, local_size=16, num_local=1)), 3)
    sampler = ShardedEpochSampler(8, 4, seed=3)
    loader = build_train_loader(ds, sampler, 4, num_workers=0, pin_memory=False)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    for _ in loader:
        pass
    assert torch.equal(torch.rand(3), expected)  # the drop-path draws after it are the same
