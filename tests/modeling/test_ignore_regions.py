"""Ignore regions in the assigners (mmdet 3.3 MaxIoUAssigner ``ignore_iof_thr``) and in the model.

Expected values are written by hand from mmdet's code (``max_iou_assigner.py``: IoF over the
candidate's area, ``> thr``, applied to the IoU matrix before any assignment step, off for
thr <= 0 and for images without GT; ``add_gt_as_proposals`` appends the GT after assignment).
The comparison with mmdet itself is ``tests/integration/test_ignore_parity.py``.
"""
from __future__ import annotations

import pytest
import torch

from swin_maskrcnn import SwinMaskRCNN, tiny_model_config
from swin_maskrcnn.modeling.assigner import MaxIoUAssigner, box_iof
from swin_maskrcnn.modeling.roi_heads.roi_head import RoIHead
from swin_maskrcnn.modeling.sampler import RandomSampler, even_choice

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_iof_is_over_the_candidates_own_area():
    boxes = t([[0, 0, 10, 10], [0, 0, 100, 100], [50, 50, 60, 60], [5, 5, 5, 9]])
    region = t([[0, 0, 20, 20]])
    iof = box_iof(boxes, region)[:, 0]
    # inside: 1; a big box holding the region: 400 / 10000; disjoint: 0; zero-area box: 0 / eps = 0
    assert iof.tolist() == pytest.approx([1.0, 0.04, 0.0, 0.0])


def test_ignored_candidates_are_neither_positive_nor_negative():
    a = MaxIoUAssigner(0.7, 0.3, 0.3, ignore_iof_thr=0.5)
    gt = t([[0, 0, 20, 20]])
    boxes = t([
        [0, 0, 20, 20],      # IoU 1 with the GT, but 100 % inside the ignore region -> ignored
        [100, 100, 120, 120],  # IoU 0 -> negative, IoF 0
        [60, 60, 80, 80],    # inside the ignore region -> ignored (would be negative)
        [45, 45, 65, 65],    # IoF 0.5625 (15x15 of 20x20) > 0.5 -> ignored
        [50, 40, 70, 60],    # IoF exactly 0.5: not > 0.5 -> negative
    ])
    ignore = t([[0, 0, 20, 20], [50, 50, 90, 90]])
    r = a.assign(boxes, gt, torch.tensor([2]), ignore)
    # box 0: IoF 1 with ignore region 0 -> -1 although it IS the GT box (mmdet: ignore first)
    assert r.gt_inds.tolist() == [-1, 0, -1, -1, 0]
    assert r.max_overlaps[[0, 2, 3]].tolist() == [-1.0, -1.0, -1.0]
    # the same without ignore regions: box 0 positive, the rest negative
    assert a.assign(boxes, gt, torch.tensor([2])).gt_inds.tolist() == [1, 0, 0, 0, 0]


def test_low_quality_match_cannot_pick_an_ignored_candidate():
    a = MaxIoUAssigner(0.7, 0.3, 0.3, ignore_iof_thr=0.5)
    gt = t([[0, 0, 10, 10]])
    boxes = t([[0, 0, 10, 14], [0, 0, 10, 20]])  # IoU 0.714 and 0.5
    ignore = t([[0, 0, 10, 15]])  # box 0 fully inside; box 1 IoF 0.75
    assert a.assign(boxes, gt, torch.tensor([0])).gt_inds.tolist() == [1, -1]
    assert a.assign(boxes, gt, torch.tensor([0]), ignore).gt_inds.tolist() == [-1, -1]
    # only box 0 ignored (IoF of box 1 with a smaller region 0.5, not > 0.5): box 1 becomes the
    # GT's low-quality match (IoU 0.5 >= min_pos_iou 0.3)
    r = a.assign(boxes, gt, torch.tensor([0]), t([[0, 0, 10, 10]]))
    iof = box_iof(boxes, t([[0, 0, 10, 10]]))[:, 0].tolist()
    assert iof == pytest.approx([10 / 14, 0.5])
    assert r.gt_inds.tolist() == [-1, 1]


@pytest.mark.parametrize("thr", [-1.0, 0.0])
def test_threshold_at_or_below_zero_is_off(thr):
    a = MaxIoUAssigner(0.7, 0.3, 0.3, ignore_iof_thr=thr)
    gt = t([[0, 0, 20, 20]])
    boxes = t([[0, 0, 20, 20], [60, 60, 80, 80]])
    r = a.assign(boxes, gt, torch.tensor([0]), t([[0, 0, 100, 100]]))
    assert r.gt_inds.tolist() == [1, 0]


def test_no_gt_means_all_negative_even_inside_ignore_regions():
    """mmdet 3.3 assigns every candidate of a GT-free image to background before the ignore step."""
    a = MaxIoUAssigner(0.7, 0.3, 0.3, ignore_iof_thr=0.5)
    r = a.assign(t([[0, 0, 20, 20], [60, 60, 80, 80]]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                 t([[0, 0, 100, 100]]))
    assert r.gt_inds.tolist() == [0, 0]


def test_ignored_candidates_are_never_sampled():
    a = MaxIoUAssigner(0.5, 0.5, 0.5, ignore_iof_thr=0.5)
    gt = t([[0, 0, 20, 20]])
    xs = torch.arange(0, 200, 10.0)
    boxes = torch.stack([xs, xs, xs + 20, xs + 20], 1)
    ignore = t([[100, 100, 200, 200]])
    r = a.assign(boxes, gt, torch.tensor([0]), ignore)
    s = RandomSampler(512, 0.25).sample(r.gt_inds, r.labels)
    inside = box_iof(boxes, ignore)[:, 0] > 0.5
    sampled = torch.cat([s.pos_inds, s.neg_inds])
    assert not inside[sampled].any()
    assert sampled.numel() == int((~inside).sum())


def test_gt_added_as_proposals_is_not_ignored():
    head = RoIHead(tiny_model_config(num_classes=3, roi=dict(ignore_iof_thr=0.5)), even_choice)
    gt = t([[10, 10, 50, 50], [100, 100, 140, 140]])
    props = torch.cat([gt + 1.0, t([[200, 200, 240, 240]])])
    ignore = t([[0, 0, 60, 60]])  # covers GT 0 and its proposal
    boxes, gt_inds, labels = head.candidates(props, gt, torch.tensor([1, 2]), ignore)
    # [GT0, GT1 (prepended, positive whatever the ignore regions), prop0 (ignored), prop1 -> GT1, prop2 neg]
    assert gt_inds.tolist() == [1, 2, -1, 2, 0]
    assert labels.tolist() == [1, 2, -1, 2, -1]


# ---------------------------------------------------------------------------------- whole model
def scene(h=128, w=160):
    torch.manual_seed(3)
    img = torch.rand(3, h, w)
    boxes = t([[10, 20, 60, 70], [80, 30, 150, 100]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 20:70, 10:60] = 1
    masks[1, 30:100, 80:150] = 1
    return img, dict(boxes=boxes, labels=torch.tensor([0, 2]), masks=masks)


def _losses(cfg_kw, target_extra):
    torch.manual_seed(0)
    m = SwinMaskRCNN(tiny_model_config(num_classes=3, **cfg_kw), sample_choice=even_choice)
    m.train()
    img, tgt = scene()
    tgt.update(target_extra)
    torch.manual_seed(1)
    losses, stats = m.losses_and_stats([img], [tgt])
    return {k: v.detach() for k, v in losses.items()}, stats


def _bits(d):
    return {k: v.numpy().tobytes() for k, v in d.items()}


CROWD = {"ignore_boxes": t([[0, 0, 70, 80], [100, 90, 160, 128]])}
ON = dict(rpn=dict(ignore_iof_thr=0.5), roi=dict(ignore_iof_thr=0.5))


@pytest.mark.parametrize(
    "cfg_kw,extra",
    [
        ({}, CROWD),  # ignore boxes, thresholds off
        (ON, {"ignore_boxes": torch.zeros(0, 4)}),  # thresholds on, no ignore box
        (ON, {}),  # thresholds on, no key
    ],
    ids=["boxes-thr-off", "thr-on-empty", "thr-on-no-key"],
)
def test_losses_bit_for_bit_when_nothing_is_ignored(cfg_kw, extra):
    ref, ref_stats = _losses({}, {})
    got, got_stats = _losses(cfg_kw, extra)
    assert _bits(got) == _bits(ref)
    assert _bits(got_stats) == _bits(ref_stats)


def test_ignore_regions_change_sampling_in_both_stages():
    ref, ref_stats = _losses({}, {})
    got, stats = _losses(ON, CROWD)
    # the ignore regions cover GT 0's box and the lower right of the image: fewer negatives
    # drawn from there in the RPN (256 per image while candidates last), fewer RPN positives
    assert stats["rpn_num_pos"] < ref_stats["rpn_num_pos"]
    assert stats["roi_num_pos"] >= 2  # the GT boxes themselves stay positive candidates
    assert got["loss_rpn_cls"].item() != ref["loss_rpn_cls"].item()


def test_bad_ignore_boxes_shape_is_named():
    m = SwinMaskRCNN(tiny_model_config(num_classes=3))
    m.train()
    img, tgt = scene()
    tgt["ignore_boxes"] = torch.zeros(3)
    with pytest.raises(ValueError, match="target 0: ignore_boxes must be"):
        m.losses_and_stats([img], [tgt])
