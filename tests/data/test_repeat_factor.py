"""Class-balanced repeat-factor sampling (swin_maskrcnn.data.repeat_factor and RunBatchSampler's
``repeat_factors``): factors vs the closed form computed by hand, visit frequencies over many epochs,
determinism, resume, DDP sharding, and the option off being the unchanged order."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.data.loader import RunBatchSampler, sample_seed
from swin_maskrcnn.data.repeat_factor import class_repeat_factors, epoch_repeats, image_repeat_factors
from swin_maskrcnn.training.config import DataConfig
from swin_maskrcnn.training.train import DetectionDataModule
from tests.conftest import write_box_coco

# 10 images: class 0 in 9 of them, class 1 in 5, class 2 in 1, one image without instances
LABELS = [[2, 1, 0, 1], [0, 1], [0, 1], [0, 1], [0, 1], [0], [0], [0], [0], []]
T = 0.8
# by hand: f = 0.9, 0.5, 0.1 -> r(c) = max(1, sqrt(0.8 / f)) = 1, sqrt(1.6), sqrt(8)
R1, R2 = math.sqrt(1.6), math.sqrt(8.0)
EXPECTED = [R2, R1, R1, R1, R1, 1.0, 1.0, 1.0, 1.0, 1.0]
ARS = [1.0, 1.5, 0.7, 1.2, 0.5, 1.0, 2.0, 0.8, 1.1, 0.6]


def test_repeat_factors_match_the_closed_form():
    per_class = class_repeat_factors(LABELS, T)
    assert per_class.keys() == {0, 1, 2}
    assert per_class[0] == 1.0  # sqrt(0.8 / 0.9) < 1
    assert per_class[1] == pytest.approx(R1, abs=1e-12)
    assert per_class[2] == pytest.approx(R2, abs=1e-12)
    assert image_repeat_factors(LABELS, T) == pytest.approx(EXPECTED, abs=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        class_repeat_factors(LABELS, 0.0)


def test_expected_visits_per_epoch_match_the_factors():
    epochs = 3000
    visits = [0] * len(EXPECTED)
    s = RunBatchSampler(ARS, 2, 1, seed=5, repeat_factors=EXPECTED)
    for e in range(epochs):
        per_epoch = Counter(i for b in s.epoch_items(e) for i, _ in b)
        for i, r in enumerate(EXPECTED):
            assert per_epoch[i] in (math.floor(r), math.ceil(r))  # integer part always, one more at most
            visits[i] += per_epoch[i]
    for i, r in enumerate(EXPECTED):
        # Bernoulli(frac) per epoch: std of the mean <= 0.5 / sqrt(3000) = 0.009; tolerance 0.04 (> 4 sigma)
        assert visits[i] / epochs == pytest.approx(r, abs=0.04), i


def test_epoch_repeats_deterministic_by_seed_and_varying_by_epoch():
    f = [1.5] * 40
    assert epoch_repeats(f, 3, 7) == epoch_repeats(f, 3, 7)
    assert epoch_repeats(f, 3, 7) != epoch_repeats(f, 4, 7)
    assert epoch_repeats(f, 3, 7) != epoch_repeats(f, 3, 8)
    a = list(RunBatchSampler(ARS, 2, 40, seed=2, repeat_factors=EXPECTED))
    b = list(RunBatchSampler(ARS, 2, 40, seed=2, repeat_factors=EXPECTED))
    c = list(RunBatchSampler(ARS, 2, 40, seed=3, repeat_factors=EXPECTED))
    assert a == b and a != c


def test_epochs_vary_in_length_and_resume_continues_the_stream():
    n = 60
    full = list(RunBatchSampler(ARS, 2, n, seed=3, repeat_factors=EXPECTED))
    s = RunBatchSampler(ARS, 2, n, seed=3, repeat_factors=EXPECTED)
    lengths = [s.rank_batches_in(e) for e in range(8)]
    assert len(set(lengths)) > 1  # stochastic rounding changes the epoch length
    # walking the stream epoch by epoch gives exactly epoch_items, and position() agrees
    at = 0
    for e, length in enumerate(lengths):
        items = s.epoch_items(e)
        assert len(items) == length
        assert full[at:at + length] == [[(i, sample_seed(3, e, i, k)) for i, k in b] for b in items][:n - at]
        assert s.position(at) == (e, 0) and s.position(at + length - 1) == (e, length - 1)
        at += length
        if at >= n:
            break
    for start in (1, lengths[0] - 1, lengths[0], lengths[0] + 3, sum(lengths[:3]) + 1, n - 1):
        tail = list(RunBatchSampler(ARS, 2, n, seed=3, start_batch=start, repeat_factors=EXPECTED))
        assert tail == full[start:], start
    # orientation-homogeneous batches, copies of one image in an epoch get different augmentation seeds
    for b in full:
        assert len({ARS[i] >= 1.0 for i, _ in b}) == 1
    e0 = [x for b in full[:lengths[0]] for x in b]
    assert len(set(e0)) == len(e0)
    assert sorted(Counter(i for i, _ in e0).items()) == sorted(Counter(i for b in s.epoch_items(0) for i, _ in b).items())


@pytest.mark.parametrize("group", [True, False])
def test_ddp_shards_are_disjoint_and_cover_each_epoch(group):
    world = 3
    s = RunBatchSampler(ARS, 2, 1, seed=1, group_by_aspect_ratio=group, repeat_factors=EXPECTED)
    for e in range(4):
        everyone = s.epoch_items(e)
        seen = []
        for r in range(world):
            rs = RunBatchSampler(ARS, 2, 1, seed=1, group_by_aspect_ratio=group, rank=r, world_size=world,
                                 repeat_factors=EXPECTED)
            start = sum(rs.rank_batches_in(k) for k in range(e))
            mine = list(RunBatchSampler(ARS, 2, start + rs.rank_batches_in(e), seed=1, group_by_aspect_ratio=group,
                                        rank=r, world_size=world, start_batch=start, repeat_factors=EXPECTED))
            assert mine == [[(i, sample_seed(1, e, i, k)) for i, k in b] for b in everyone[r::world]]
            seen += [x for b in mine for x in b]
        assert len(set(seen)) == len(seen)  # disjoint (copies differ by seed)
        assert Counter(i for i, _ in seen) == Counter(i for b in everyone for i, _ in b)  # covering


@pytest.mark.parametrize("group", [True, False])
def test_all_ones_is_the_unchanged_order(group):
    off = list(RunBatchSampler(ARS, 3, 25, seed=4, group_by_aspect_ratio=group))
    ones = list(RunBatchSampler(ARS, 3, 25, seed=4, group_by_aspect_ratio=group, repeat_factors=[1.0] * len(ARS)))
    assert ones == off


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match="repeat factors for"):
        RunBatchSampler(ARS, 2, 1, repeat_factors=[1.0])
    with pytest.raises(ValueError, match=">= 1"):
        RunBatchSampler(ARS, 2, 1, repeat_factors=[0.5] * len(ARS))


def test_training_data_uses_non_crowd_classes(tmp_path):
    # 4 images; class 1 in all, class 2 in one (plus a crowd of class 2 elsewhere, which must not count)
    boxes = [(0, 1, [2, 2, 10, 10]), (1, 1, [2, 2, 10, 10]), (2, 1, [2, 2, 10, 10]), (3, 1, [2, 2, 10, 10]),
             (0, 2, [20, 20, 8, 8]), (1, 2, [20, 20, 8, 8], 1)]
    ann, imgs = write_box_coco(tmp_path, [(40, 40)] * 4, boxes, [(1, "a"), (2, "b")])
    ds = CocoInstanceDataset(ann, imgs, transforms=None)
    cfg = SimpleNamespace(data=SimpleNamespace(repeat_factor_threshold=1.0))
    got = DetectionDataModule(cfg, ds).repeat_factors()  # type: ignore[arg-type]
    assert got == pytest.approx([2.0, 1.0, 1.0, 1.0], abs=1e-12)  # f(b) = 1/4 -> sqrt(1 / 0.25) = 2
    cfg.data.repeat_factor_threshold = None
    assert DetectionDataModule(cfg, ds).repeat_factors() is None
    base = dict(train_ann="a.json", train_images="i")
    assert DataConfig(**base).repeat_factor_threshold is None
    with pytest.raises(ValueError):
        DataConfig(**base, repeat_factor_threshold=0)


@pytest.mark.slow
def test_training_resume_with_repeat_factors_reproduces_the_run(tmp_path):
    """End to end (tiny model, CPU): 6 steps with repeats on vs 3 + resume from step 3 (the resume crosses a
    data epoch boundary); the losses of steps 4-6 are the uninterrupted run's."""
    from swin_maskrcnn.training.train import train
    from tests.conftest import make_tiny_coco, read_metrics_csv, tiny_train_config

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=6)

    def cfg(name):
        c = tiny_train_config(ann, imgs, tmp_path / "runs", name, max_steps=6, val_every_n_steps=100,
                              checkpoint_every_n_steps=3)
        c.data.repeat_factor_threshold = 1.0
        return c

    def losses(run_dir):
        return {int(float(r["step"])): float(r["train/loss"]) for r in read_metrics_csv(Path(run_dir)) if r.get("train/loss")}

    full = losses(train(cfg("full"))["run_dir"])
    resumed = losses(train(cfg("resumed"), resume=str(tmp_path / "runs/full/checkpoints/step_0000003.ckpt"))["run_dir"])
    assert sorted(resumed) == [4, 5, 6]
    for k in resumed:
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), k


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 1)])
def test_data_epoch_walks_the_epoch_lengths(world, rank):
    """train/data_epoch: whole numbers exactly at the end of each (differently long) data epoch."""
    s = RunBatchSampler(ARS, 2, 1, seed=3, rank=rank, world_size=world, repeat_factors=EXPECTED)
    ends, run_batch = [], 0
    for e in range(6):
        n = s.rank_batches_in(e)
        assert [s.data_epoch(run_batch + j) for j in range(n)] == [e + (j + 1) / n for j in range(n)]
        run_batch += n
        ends.append(run_batch)
    if world == 1:  # the epochs differ in length (a rank's share of 3 may not)
        assert len({b - a for a, b in zip([0] + ends, ends)}) > 1
    off = RunBatchSampler(ARS, 2, 1, seed=3, rank=rank, world_size=world)
    assert [off.data_epoch(b) for b in range(20)] == [(b + 1) / off.batches_per_epoch for b in range(20)]
