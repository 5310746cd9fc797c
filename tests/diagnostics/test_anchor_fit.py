"""Anchor fit (swin_maskrcnn.diagnostics.anchor_fit): boxes placed against known anchors give IoUs
and best-possible recalls computed here by hand; the closed form equals box_iou over every anchor."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from conftest import write_box_coco
from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.data.transforms import build_train_transforms
from swin_maskrcnn.diagnostics.anchor_fit import (
    FitBoxes,
    anchor_generator,
    best_anchor_ious,
    collect_boxes,
    fit_anchors,
    nearest_anchor_ious,
    training_scale,
)
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.training.config import DataConfig


def _model(scales=(8.0,), ratios=(1.0,)):
    return tiny_model_config(num_classes=1, rpn=dict(anchor_scales=list(scales), anchor_ratios=list(ratios)))


def _dataset(tmp_path, boxes, size=(128, 128)):
    ann, imgs = write_box_coco(tmp_path, [size], [(0, 1, b) for b in boxes], [(1, "obj")])
    return CocoInstanceDataset(ann, imgs)


# scale 8, ratio 1: P2 anchors are 32 x 32 squares centred on (4i, 4j); P3 64 x 64 on (8i, 8j), ...
EXACT = [48, 48, 32, 32]  # = the P2 anchor centred on (64, 64): IoU 1
HALF_SHIFT = [50, 50, 32, 32]  # shifted by half the stride (2 px) in x and y
SMALL_INSIDE = [56, 56, 16, 16]  # centred 16 x 16 inside the 32 x 32 anchor: 256 / 1024
MID_INSIDE = [20, 20, 24, 24]  # centred on (32, 32), 24 x 24: 576 / 1024


def test_box_equal_to_an_anchor_has_iou_one(tmp_path):
    fit = fit_anchors(_dataset(tmp_path, [EXACT]), _model(), scale=(128, 128), search=False)
    assert fit.current.best_iou.tolist() == [1.0]
    assert fit.current.bpr == 1.0 and fit.current.unmatched == 0
    assert fit.per_level()[0]["boxes"] == 1  # on P2


def test_half_stride_shift_closed_form(tmp_path):
    w, s = 32.0, 4.0
    inter = (w - s / 2) ** 2
    expected = inter / (2 * w * w - inter)  # 900 / 1148
    fit = fit_anchors(_dataset(tmp_path, [HALF_SHIFT]), _model(), scale=(128, 128), search=False)
    assert fit.current.best_iou.item() == pytest.approx(expected, abs=1e-6)
    assert expected > 0.7 and fit.current.bpr == 1.0


def test_bpr_bpr_min_pos_unmatched_by_hand(tmp_path):
    # IoUs 1, 1, 0.784, 0.5625, 0.25 -> >= 0.7: 3 of 5; >= 0.3: 4 of 5; below 0.3: 1
    boxes = [EXACT, [80, 80, 32, 32], HALF_SHIFT, MID_INSIDE, SMALL_INSIDE]
    fit = fit_anchors(_dataset(tmp_path, boxes), _model(), scale=(128, 128), search=False)
    got = sorted(fit.current.best_iou.tolist(), reverse=True)
    assert got == pytest.approx([1.0, 1.0, 900 / 1148, 576 / 1024, 256 / 1024], abs=1e-6)
    d = fit.as_dict()
    assert d["pos_iou_thr"] == 0.7 and d["min_pos_iou"] == 0.3
    assert d["current"] == {"anchor_scales": [8.0], "anchor_ratios": [1.0], "bpr": 3 / 5, "bpr_min_pos": 4 / 5,
                            "unmatched": 1}
    assert fit.num_boxes == 5


def test_suggestion_reaches_bpr_one_where_one_scale_fits(tmp_path):
    # 16 px boxes centred on the stride-4 grid and 32 px ones on the stride-8 grid: scale 4 fits all
    boxes = [[4 * i - 8, 4 * i - 8, 16, 16] for i in range(3, 12)] + [[8 * i - 16, 64, 32, 32] for i in range(3, 12)]
    model = _model(scales=(8.0,), ratios=(0.5, 1.0, 2.0))
    fit = fit_anchors(_dataset(tmp_path, boxes), model, scale=(128, 128))
    assert fit.current.bpr == 0.5 and fit.current.unmatched == 9  # the 32 px ones sit on P2's 32 px anchors
    assert fit.suggested.bpr == 1.0 and fit.suggested.unmatched == 0
    # every scale s with (16 / 4s)^2 >= 0.7 (s <= 4 / sqrt(0.7) = 4.78) reaches 1.0; ties go to the one
    # closest to the current 8: the grid's 2^(9/4) = 4.757; the ratios stay (same count, distance 0)
    assert fit.suggested.anchor_scales == [round(2 ** (9 / 4), 3)]
    assert fit.suggested.anchor_ratios == [0.5, 1.0, 2.0]
    assert fit.override_line() == "model.rpn.anchor_scales=[4.757] model.rpn.anchor_ratios=[0.5,1,2]"


def test_suggestion_keeps_current_when_it_is_already_best(tmp_path):
    fit = fit_anchors(_dataset(tmp_path, [EXACT, [80, 80, 32, 32]]), _model(), scale=(128, 128))
    assert not fit.changed and fit.suggested.as_dict() == fit.current.as_dict()


def test_closed_form_equals_box_iou_over_every_anchor():
    g = torch.Generator().manual_seed(0)
    n = 400
    pads = torch.tensor([[128, 160], [96, 96]])[torch.randint(0, 2, (n,), generator=g)]
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    xy = torch.rand(n, 2, generator=g) * (pads.flip(1).float() - wh)
    boxes = torch.cat([xy, xy + wh], 1)
    fb = FitBoxes(boxes, pads, torch.zeros(n, dtype=torch.long), torch.arange(n), 1, None)
    model = _model(scales=(3.0, 6.0), ratios=(0.5, 1.0, 2.0))
    exact, exact_level = best_anchor_ious(fb, anchor_generator(model.rpn))
    fast, fast_level = nearest_anchor_ious(fb, model.rpn.anchor_strides, [3.0, 6.0], [0.5, 1.0, 2.0])
    assert torch.allclose(fast, exact, atol=1e-5)
    # ties (the same anchor on two levels) go to the lower level; a tie within float rounding may not
    assert (fast_level != exact_level).sum() <= 4
    # and box_iou against every anchor of one image, built independently of the module's grouping
    i = 0
    ph, pw = pads[i].tolist()
    gen = anchor_generator(model.rpn)
    anchors = torch.cat(gen.grid_anchors([(math.ceil(ph / s), math.ceil(pw / s)) for s in gen.strides], torch.device("cpu")))
    assert box_iou(boxes[i:i + 1], anchors).max().item() == pytest.approx(exact[i].item(), abs=1e-7)


def test_boxes_are_resized_as_the_training_pipeline_resizes_them(tmp_path):
    # a 256 x 128 (w x h) image to scale (128, 64): factor 0.5 on both axes, padded to 128 x 64
    ann, imgs = write_box_coco(tmp_path, [(256, 128)], [(0, 1, [40, 20, 64, 64]), (0, 1, [200, 100, 56, 28])],
                               [(1, "obj")])
    ds = CocoInstanceDataset(ann, imgs, transforms=build_train_transforms("1x", scale=(128, 64), flip_prob=0.0))
    fb = collect_boxes(ds, (128, 64))
    assert fb.boxes.tolist() == [[20.0, 10.0, 52.0, 42.0], [100.0, 50.0, 128.0, 64.0]]
    assert fb.pad_shapes.tolist() == [[64, 128], [64, 128]]
    _, target = ds[0]  # the pipeline itself (no flip)
    assert torch.equal(target["boxes"], fb.boxes)


def test_training_scale_per_pipeline():
    d = dict(train_ann="a.json", train_images="i")
    assert training_scale(DataConfig(**d, scale=(512, 256)))[0] == (512, 256)
    scale, note = training_scale(DataConfig(**d, transforms="ms_crop_3x"))
    assert scale == (1333, 640) and "middle" in note
    assert training_scale(DataConfig(**d, transforms="none"))[0] is None


def test_no_boxes_gives_zero_and_no_search(tmp_path):
    ann, imgs = write_box_coco(tmp_path, [(64, 64)], [], [(1, "obj")])
    fit = fit_anchors(CocoInstanceDataset(ann, imgs), _model(), scale=(64, 64))
    assert fit.num_boxes == 0 and fit.current.bpr == 0.0 and not fit.changed
