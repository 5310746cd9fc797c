"""Tiling and merging: tile coordinates in closed form, and the stand-in detector's exact merge."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from standin_detector import StandIn, paint_canvas, random_objects

from swin_maskrcnn.inference import (Instances, SliceConfig, SliceConfigError, crop_rle, crops_to_dense,
                                     merge_instances, paste_crops, predict_instances, tile_grid, tile_starts)


# ------------------------------------------------------------------------------------------------
# tiles
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,tile,overlap,expected", [
    (100, 40, 0.2, [0, 32, 60]),        # stride 40 - 8 = 32; the last tile shifted inwards to end at 100
    (100, 25, 0.0, [0, 25, 50, 75]),    # overlap 0, exact fit: no shifted tile
    (100, 30, 0.0, [0, 30, 60, 70]),    # overlap 0, no fit: the last one overlaps its neighbour by 20
    (100, 100, 0.2, [0]),               # tile = image
    (60, 100, 0.2, [0]),                # image smaller than the tile: one tile of the image's size
    (101, 50, 0.5, [0, 25, 50, 51]),
])
def test_tile_starts(size, tile, overlap, expected):
    assert tile_starts(size, tile, overlap) == expected


def test_tile_grid_non_square_covers_the_image_with_full_size_tiles():
    h, w, th, tw = 130, 317, 48, 100
    tiles = tile_grid(h, w, th, tw, 0.25)
    covered = np.zeros((h, w), dtype=int)
    for t in tiles:
        assert (t.x1 - t.x0, t.y1 - t.y0) == (tw, th)
        assert 0 <= t.x0 and t.x1 <= w and 0 <= t.y0 and t.y1 <= h
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert covered.min() >= 1
    assert [t.y0 for t in tiles[:: len(tile_starts(w, tw, 0.25))]] == [0, 36, 72, 82]
    # a smaller image along one axis only: full height, tiled width
    small = tile_grid(30, 317, 48, 100, 0.25)
    assert {(t.y0, t.y1) for t in small} == {(0, 30)} and len(small) == len(tile_starts(317, 100, 0.25))


@pytest.mark.parametrize("kwargs,word", [
    ({"height": 0, "width": 10}, "tile size"), ({"height": 10, "width": -1}, "tile size"),
    ({"height": 10, "width": 10, "overlap": 1.0}, "--overlap"), ({"height": 10, "width": 10, "overlap": -0.1}, "--overlap"),
    ({"height": 10, "width": 10, "batch": 0}, "--slice-batch"), ({"height": 10, "width": 10, "merge": "wbf"}, "--merge"),
    ({"height": 10, "width": 10, "merge_metric": "dice"}, "--merge-metric"),
    ({"height": 10, "width": 10, "merge_iou": 0.0}, "--merge-iou"),
])
def test_bad_slice_settings_name_the_option(kwargs, word):
    with pytest.raises(SliceConfigError, match=word):
        SliceConfig(**kwargs)


def test_zero_size_image_is_an_error():
    with pytest.raises(SliceConfigError, match="size"):
        predict_instances(StandIn(), np.zeros((0, 10, 3), np.uint8), SliceConfig(8, 8))


# ------------------------------------------------------------------------------------------------
# crops and their RLEs
# ------------------------------------------------------------------------------------------------
def test_paste_crops_equals_the_models_full_image_paste():
    from swin_maskrcnn.modeling.postprocess import paste_masks

    g = torch.Generator().manual_seed(0)
    h, w = 61, 83
    xy = torch.rand(40, 2, generator=g) * torch.tensor([w, h])
    wh = 1 + torch.rand(40, 2, generator=g) * 40
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    probs = torch.rand(40, 28, 28, generator=g)
    full = paste_masks(probs, boxes, h, w, 0.5)
    windows, crops = paste_crops(probs, boxes, torch.tensor([[0, 0, w, h]]).expand(40, 4))
    assert torch.equal(crops_to_dense([c >= 0.5 for c in crops], windows, h, w), full)


def test_crop_rle_equals_pycocotools_on_the_dense_mask():
    from swin_maskrcnn.evaluation import masks_to_rles

    g = torch.Generator().manual_seed(1)
    h, w = 37, 53
    cases = [([3, 4, 20, 30], None), ([0, 0, w, h], None), ([10, 0, 20, h], None), ([0, 5, w, 9], None),
             ([5, 5, 9, 9], torch.zeros(4, 4, dtype=torch.bool)), ([50, 30, 53, 37], torch.ones(7, 3, dtype=torch.bool))]
    for window, crop in cases:
        if crop is None:
            crop = torch.rand(window[3] - window[1], window[2] - window[0], generator=g) > 0.4
        dense = crops_to_dense([crop], torch.tensor([window]), h, w)
        assert crop_rle(crop, window, h, w) == masks_to_rles(dense)[0], window


# ------------------------------------------------------------------------------------------------
# the stand-in detector: exact merge
# ------------------------------------------------------------------------------------------------
def _dense_gt(gt, h, w):
    out = np.zeros((len(gt), h, w), dtype=bool)
    for k, g in enumerate(gt):
        mh, mw = g["mask"].shape
        out[k, g["y"] : g["y"] + mh, g["x"] : g["x"] + mw] = g["mask"]
    return torch.from_numpy(out)


def _ious(inst: Instances, gt, h, w) -> torch.Tensor:
    pred = crops_to_dense(inst.binary_crops(0.5), inst.windows, h, w).flatten(1).float()
    ref = _dense_gt(gt, h, w).flatten(1).float()
    inter = ref @ pred.T
    return inter / (ref.sum(1)[:, None] + pred.sum(1)[None, :] - inter)  # (G, K)


def _assert_one_instance_per_object(inst: Instances, gt, h, w):
    ious = _ious(inst, gt, h, w)
    assert len(inst) == len(gt), f"{len(inst)} instances for {len(gt)} objects"
    best = ious.max(1)
    assert best.values.min() >= 0.99, best.values.min()
    assert sorted(best.indices.tolist()) == list(range(len(gt)))  # each instance is one object's, none twice
    for k, g in enumerate(gt):
        j = int(best.indices[k])
        assert int(inst.labels[j]) == g["label"]
        assert inst.boxes[j].tolist() == [float(v) for v in g["box"]]


@pytest.mark.parametrize("merge,metric", [("nmm", "ios"), ("nms", "ios")])
def test_each_object_is_one_instance_after_the_merge(merge, metric):
    h, w = 300, 517
    canvas, gt = paint_canvas(h, w, random_objects(h, w, 80, (6, 40), seed=0, num_labels=3))
    model = StandIn()
    inst = predict_instances(model, canvas, SliceConfig(96, 128, overlap=0.45, batch=3, merge=merge, merge_metric=metric))
    tiles = tile_grid(h, w, 96, 128, 0.45)
    assert len(tiles) > 10 and model.calls == [(96, 128)] * len(tiles)  # every tile full size, at its own size
    _assert_one_instance_per_object(inst, gt, h, w)


def test_mask_iou_leaves_cut_slivers_as_duplicates():
    """Why IoS is the default: a sliver of an object cut by a tile border has a small IoU with the whole
    object, so merging by IoU keeps it as a second instance."""
    h, w = 300, 517
    canvas, gt = paint_canvas(h, w, random_objects(h, w, 80, (6, 40), seed=0, num_labels=3))
    inst = predict_instances(StandIn(), canvas, SliceConfig(96, 128, overlap=0.45, merge_metric="iou"))
    assert len(inst) > len(gt)
    assert _ious(inst, gt, h, w).max(1).values.min() >= 0.99  # the whole objects are still there


def test_nms_keeps_the_whole_object_even_when_a_cut_part_scores_higher():
    h, w = 200, 260
    canvas, gt = paint_canvas(h, w, random_objects(h, w, 40, (8, 30), seed=3))
    inst = predict_instances(StandIn(score_of_cut=0.99), canvas, SliceConfig(80, 80, overlap=0.4, merge="nms"))
    _assert_one_instance_per_object(inst, gt, h, w)


def test_overlap_zero_and_image_smaller_than_a_tile():
    h, w = 150, 90
    canvas, gt = paint_canvas(h, w, random_objects(h, w, 20, (6, 20), seed=5, num_labels=2))
    # one tile larger than the image: the image is predicted whole, at its own size
    model = StandIn()
    inst = predict_instances(model, canvas, SliceConfig(400, 500))
    assert model.calls == [(h, w)]
    _assert_one_instance_per_object(inst, gt, h, w)
    # overlap 0: objects on a tile border are cut in two, nmm + IoS cannot match disjoint parts, so the
    # parts stay apart; objects off the borders are exact
    inst0 = predict_instances(StandIn(), canvas, SliceConfig(50, 45, overlap=0.0))
    borders_x, borders_y = {45}, {50, 100}
    whole = [g for g in gt if not any(g["box"][0] < b < g["box"][2] for b in borders_x)
             and not any(g["box"][1] < b < g["box"][3] for b in borders_y)]
    ious = _ious(inst0, whole, h, w)
    assert ious.max(1).values.min() >= 0.99
    assert len(inst0) >= len(gt)


def test_class_aware_merge_keeps_touching_objects_of_different_classes_apart():
    h, w = 64, 120
    square = np.ones((20, 20), dtype=bool)
    canvas, gt = paint_canvas(h, w, [(square, 40, 20, 0), (square, 60, 20, 1)])  # touching at x = 60
    cfg = dict(height=64, width=64, overlap=0.5, merge_iou=0.2)
    model = StandIn(dilate=3)  # masks bleed 3 px: the two objects' masks overlap by 6 px (IoS 0.23)
    aware = predict_instances(model, canvas, SliceConfig(**cfg))
    assert sorted(aware.labels.tolist()) == [0, 1]
    assert sorted(aware.boxes.tolist()) == [[37.0, 17.0, 63.0, 43.0], [57.0, 17.0, 83.0, 43.0]]
    # the same two detections from two tiles, merged with and without the class check
    a, b = aware.select([0]).with_source(0), aware.select([1]).with_source(1)
    pair = Instances.cat([a, b])
    assert len(merge_instances(pair, "nmm", 0.2, "ios")) == 2
    assert len(merge_instances(pair, "nmm", 0.2, "ios", class_agnostic=True)) == 1  # the control


def test_merge_of_nothing_and_of_disjoint_detections():
    assert len(merge_instances(Instances.empty())) == 0
    crops = [torch.ones(4, 4), torch.ones(4, 4)]
    inst = Instances(torch.tensor([[0.0, 0, 4, 4], [10, 10, 14, 14]]), torch.tensor([0.5, 0.9]),
                     torch.tensor([0, 0]), torch.tensor([[0, 0, 4, 4], [10, 10, 14, 14]]), crops)
    out = merge_instances(inst, "nmm")
    assert out.scores.tolist() == pytest.approx([0.9, 0.5])  # sorted by score, nothing merged


def test_nmm_unites_masks_and_boxes_of_a_group():
    a = torch.zeros(10, 10)
    a[:, :6] = 1.0
    b = torch.zeros(10, 10)
    b[:, 3:] = 1.0
    inst = Instances(torch.tensor([[0.0, 0, 6, 10], [3, 0, 10, 10]]), torch.tensor([0.8, 0.6]), torch.tensor([1, 1]),
                     torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]]), [a, b])
    out = merge_instances(inst, "nmm", threshold=0.3, metric="iou")  # IoU 3/10
    assert len(out) == 1 and out.boxes[0].tolist() == [0, 0, 10, 10] and out.scores.tolist() == pytest.approx([0.8])
    assert bool((out.crops[0] >= 0.5).all())
    assert len(merge_instances(inst, "nmm", threshold=0.31, metric="iou")) == 2
    kept = merge_instances(inst, "nms", threshold=0.5, metric="ios")  # IoS 3/6
    assert len(kept) == 1 and kept.boxes[0].tolist() == [0, 0, 6, 10]
