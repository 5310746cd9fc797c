"""The training run's data order (swin_maskrcnn.data.loader): RunBatchSampler resumes, shards and
groups by orientation; SeededSamples seeds each sample's augmentation without touching the RNG."""
from __future__ import annotations

import torch

from swin_maskrcnn.data.loader import RunBatchSampler, SeededSamples, sample_seed


def _stream(**kw) -> list[list[tuple[int, int]]]:
    return list(RunBatchSampler(**kw))


def test_run_sampler_resume_is_the_tail_of_the_stream():
    ars = [1.0, 1.5, 0.7, 1.2, 0.5, 1.0, 2.0, 0.8, 1.1]
    full = _stream(aspect_ratios=ars, batch_size=2, num_batches=23, seed=3)
    assert len(full) == 23
    for start in (0, 1, 5, 6, 17, 22):
        tail = _stream(aspect_ratios=ars, batch_size=2, num_batches=23, seed=3, start_batch=start)
        assert tail == full[start:]
    s = RunBatchSampler(ars, 2, 23, seed=3)
    assert len(s) == 23
    # data epochs: each covers every index exactly once and in a different order
    per = s.batches_per_epoch
    e0 = [i for b in full[:per] for i, _ in b]
    e1 = [i for b in full[per:2 * per] for i, _ in b]
    assert sorted(e0) == sorted(e1) == list(range(len(ars)))
    assert e0 != e1
    # orientation-homogeneous batches
    for b in full:
        assert len({ars[i] >= 1.0 for i, _ in b}) == 1
    # augmentation seeds depend on (seed, epoch, index) only
    assert full[0][0][1] == sample_seed(3, 0, full[0][0][0])


def test_run_sampler_shards_ranks():
    ars = [1.0] * 7 + [0.5] * 4
    world = 3
    per_rank = [_stream(aspect_ratios=ars, batch_size=2, num_batches=4, seed=1, rank=r, world_size=world) for r in range(world)]
    epoch0 = RunBatchSampler(ars, 2, 4, seed=1).epoch_batches(0)
    for r in range(world):
        expected = epoch0[r::world]
        assert [[i for i, _ in b] for b in per_rank[r][:len(expected)]] == expected
    seen = [i for r in range(world) for b in per_rank[r][:len(epoch0[r::world])] for i, _ in b]
    assert sorted(seen) == list(range(len(ars)))


def test_seeded_samples_are_deterministic_and_leave_rng_alone():
    class RandomItems(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededSamples(RandomItems())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = ds[(2, 99)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ds[(2, 99)], a) and not torch.equal(ds[(2, 98)], a)
