"""MaxIoUAssigner on hand-built IoU matrices and real anchors, RandomSampler counts, RoIHead.sample.

Expected values are written by hand from mmdet's rules (reference section 1.4) or computed with
torchvision's ``box_iou``. Two properties are pinned down explicitly: every GT whose best IoU reaches
min_pos_iou gets a positive (low-quality matches), and the GT boxes join the RoI candidates as
positives (so the RoI heads see foreground from the first step).
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from swin_maskrcnn.modeling.anchors import AnchorGenerator
from swin_maskrcnn.modeling.assigner import MaxIoUAssigner
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.roi_heads.roi_head import RoIHead
from swin_maskrcnn.modeling.sampler import RandomSampler, SamplingResult, even_choice, random_choice

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")

RPN_ASSIGNER = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# -------------------------------------------------------------------------------- assigner, matrix
def test_thresholds_negative_ignore_positive():
    a = MaxIoUAssigner(**RPN_ASSIGNER, match_low_quality=False)
    #             a0    a1    a2    a3     a4      a5     a6    a7
    ov = t([[0.90, 0.50, 0.10, 0.00, 0.2999, 0.30, 0.6999, 0.10],
            [0.20, 0.71, 0.05, 0.00, 0.1000, 0.30, 0.1000, 0.70]])
    r = a.assign_from_overlaps(ov, torch.tensor([4, 9]))
    # a0 >= 0.7 -> GT0; a1 0.71 -> GT1; a2, a3, a4 < 0.3 -> negative; a5 = 0.3 exactly -> ignore;
    # a6 in [0.3, 0.7) -> ignore; a7 = 0.7 exactly -> positive GT1
    assert r.gt_inds.tolist() == [1, 2, 0, 0, 0, -1, -1, 2]
    assert r.labels.tolist() == [4, 9, -1, -1, -1, -1, -1, 9]
    torch.testing.assert_close(r.max_overlaps, ov.max(0).values)
    assert r.gt_inds.dtype == torch.long


def test_low_quality_rule_mmdet_semantics():
    """GT0's best IoU 0.4 >= 0.3: ALL anchors at 0.4 go to GT0, even a0 that step 2 gave to GT1
    (torchvision's Matcher would keep a0 on GT1). GT2's best IoU 0.2 < min_pos_iou: nothing."""
    a = MaxIoUAssigner(**RPN_ASSIGNER, match_low_quality=True)
    #          a0    a1    a2    a3    a4
    ov = t([[0.40, 0.40, 0.35, 0.10, 0.10],   # GT0: best 0.4, tied at a0 and a1
            [0.80, 0.00, 0.00, 0.90, 0.10],   # GT1: best 0.9 at a3
            [0.00, 0.00, 0.20, 0.00, 0.20]])  # GT2: best 0.2 -> no low-quality match
    r = a.assign_from_overlaps(ov, torch.tensor([5, 7, 9]))
    assert r.gt_inds.tolist() == [1, 1, -1, 2, 0]
    assert r.labels.tolist() == [5, 5, -1, 7, -1]
    assert 3 not in r.gt_inds.tolist()
    torch.testing.assert_close(r.max_overlaps, t([0.8, 0.4, 0.35, 0.9, 0.2]))
    # without low-quality matching a0 keeps its step-2 GT1 and a1 is ignored
    r = MaxIoUAssigner(**RPN_ASSIGNER, match_low_quality=False).assign_from_overlaps(ov, torch.tensor([5, 7, 9]))
    assert r.gt_inds.tolist() == [2, -1, -1, 2, 0]


def test_low_quality_later_gt_wins_a_shared_tie():
    """GTs are visited in order, so a later GT whose best anchor is the same one takes it."""
    a = MaxIoUAssigner(**RPN_ASSIGNER)
    ov = t([[0.5, 0.1], [0.5, 0.2]])
    assert a.assign_from_overlaps(ov, torch.tensor([0, 1])).gt_inds.tolist() == [2, 0]


def test_min_pos_iou_boundary_inclusive():
    a = MaxIoUAssigner(**RPN_ASSIGNER)
    assert a.assign_from_overlaps(t([[0.3, 0.1]]), torch.tensor([0])).gt_inds.tolist() == [1, 0]
    assert a.assign_from_overlaps(t([[0.2999, 0.1]]), torch.tensor([0])).gt_inds.tolist() == [0, 0]


def test_rcnn_thresholds_equal_pos_and_neg():
    """RoI assigner 0.5 / 0.5 / 0.5: no ignore band."""
    a = MaxIoUAssigner(0.5, 0.5, 0.5)
    ov = t([[0.49, 0.5, 0.8, 0.0]])
    assert a.assign_from_overlaps(ov, torch.tensor([2])).gt_inds.tolist() == [0, 1, 1, 0]


def test_zero_gts_all_negative_and_zero_boxes():
    a = MaxIoUAssigner(**RPN_ASSIGNER)
    boxes = t([[0, 0, 10, 10], [5, 5, 50, 50], [1, 2, 3, 4]])
    r = a.assign(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert r.gt_inds.tolist() == [0, 0, 0] and r.labels.tolist() == [-1, -1, -1]
    r = a.assign_from_overlaps(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert r.gt_inds.tolist() == [0, 0, 0]
    r = a.assign(torch.zeros(0, 4), t([[0, 0, 10, 10]]), torch.tensor([1]))
    assert r.gt_inds.numel() == 0 and r.labels.numel() == 0


def test_assign_uses_plain_iou_of_boxes():
    a = MaxIoUAssigner(**RPN_ASSIGNER)
    gts = t([[0, 0, 10, 10], [100, 100, 140, 120]])
    boxes = t([[0, 0, 10, 10], [2, 0, 12, 10], [5, 0, 15, 10], [100, 100, 140, 121], [300, 300, 310, 310]])
    r = a.assign(boxes, gts, torch.tensor([3, 8]))
    # IoUs with GT0: 1, 8/12 = 0.667 (ignore), 5/15 = 0.333 (ignore); a3 with GT1 = 800/820; a4: 0
    assert r.gt_inds.tolist() == [1, -1, -1, 2, 0]
    torch.testing.assert_close(r.max_overlaps, box_iou(gts, boxes).max(0).values)


# ------------------------------------------ assigner, real anchors: every GT gets a positive
def real_anchors(img_h=256, img_w=256):
    strides = [4, 8, 16, 32, 64]
    gen = AnchorGenerator(strides, [8.0], [0.5, 1.0, 2.0])
    return torch.cat(gen.grid_anchors([(math.ceil(img_h / s), math.ceil(img_w / s)) for s in strides], torch.device("cpu")))


@pytest.mark.parametrize(
    "gt,best_at_least,best_exact",
    [
        ([37.3, 51.7, 137.3, 131.7], 0.3, None),  # the predecessor's 100x80 box: 0 positives there
        ([201.0, 13.0, 221.0, 33.0], 0.3, 400 / 1024),  # 20x20 inside a 32x32 anchor
        ([60.5, 200.5, 130.5, 220.5], 0.3, None),  # elongated 70x20
        ([101.5, 13.2, 113.5, 25.2], None, 144 / 1024),  # 12x12: best IoU 0.14 < min_pos_iou
    ],
)
def test_each_gt_gets_a_positive_iff_best_iou_reaches_min_pos_iou(gt, best_at_least, best_exact):
    anchors = real_anchors()
    a = MaxIoUAssigner(**RPN_ASSIGNER)
    gts = t([gt])
    iou = box_iou(gts.double(), anchors.double())[0]  # independent IoU
    best = float(iou.max())
    if best_exact is not None:
        assert best == pytest.approx(best_exact, abs=1e-6)
    if best_at_least is not None:
        assert best >= best_at_least
    r = a.assign(anchors, gts, torch.tensor([0]))
    pos = r.gt_inds == 1
    iou32 = box_iou(gts, anchors)[0]
    if best >= 0.3:
        # mmdet's tie rule is exact equality in the float32 IoU matrix (e.g. for the 20x20 box the
        # ratio-0.5/2 anchors' float32 IoU 0.39062509 beats the square anchors' exact 0.390625)
        ties = iou32 == iou32.max()
        assert int(pos.sum()) >= 1 and bool(pos[ties].all())
        assert torch.equal(pos, ties | (iou32 >= 0.7))
    else:
        assert int(pos.sum()) == 0  # mmdet: min_pos_iou 0.3 leaves the 12x12 box without positives
    assert torch.equal(r.gt_inds == 0, (iou32 < 0.3) & ~pos)


def test_several_real_gts_each_get_their_own_positive():
    anchors = real_anchors()
    gts = t([[37.3, 51.7, 137.3, 131.7], [201.0, 13.0, 221.0, 33.0], [150.0, 180.0, 250.0, 230.0], [10, 150, 60, 250]])
    r = MaxIoUAssigner(**RPN_ASSIGNER).assign(anchors, gts, torch.tensor([0, 0, 0, 0]))
    iou = box_iou(gts, anchors)
    for g in range(4):
        assert float(iou[g].max()) >= 0.3
        assert int(r.gt_inds[int(iou[g].argmax())]) == g + 1, f"GT {g} lost its best anchor"


# ---------------------------------------------------------------------------------------- sampler
def make_assignment(n_pos: int, n_neg: int, n_ign: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.cat([torch.randint(1, 4, (n_pos,), generator=g), torch.zeros(n_neg, dtype=torch.long), torch.full((n_ign,), -1)])
    return vals[torch.randperm(vals.numel(), generator=g)]


def check_result(res: SamplingResult, gt_inds: torch.Tensor, labels: torch.Tensor):
    for inds in (res.pos_inds, res.neg_inds):
        assert torch.equal(inds, torch.unique(inds))  # sorted, unique
    assert bool((gt_inds[res.pos_inds] > 0).all()) and bool((gt_inds[res.neg_inds] == 0).all())
    assert torch.equal(res.pos_assigned_gt_inds, gt_inds[res.pos_inds] - 1)
    assert torch.equal(res.pos_labels, labels[res.pos_inds])


@pytest.mark.parametrize("choice", [random_choice, even_choice])
@pytest.mark.parametrize(
    "num,frac,n_pos,n_neg,exp_pos,exp_neg",
    [
        (256, 0.5, 300, 5000, 128, 128),  # many positives: capped at the fraction
        (256, 0.5, 10, 5000, 10, 246),  # few positives: all taken, negatives fill
        (256, 0.5, 10, 20, 10, 20),  # few of both
        (512, 0.25, 1000, 1000, 128, 384),  # RCNN setting
        (512, 0.25, 0, 1000, 0, 512),
        (256, 0.5, 0, 0, 0, 0),
    ],
)
def test_sampler_counts(choice, num, frac, n_pos, n_neg, exp_pos, exp_neg):
    torch.manual_seed(1)
    gt_inds = make_assignment(n_pos, n_neg, 77)
    labels = torch.where(gt_inds > 0, gt_inds * 10, torch.full_like(gt_inds, -1))
    res = RandomSampler(num, frac, choice).sample(gt_inds, labels)
    assert (res.num_pos, res.num_neg) == (exp_pos, exp_neg)
    assert res.num_pos <= int(num * frac)
    check_result(res, gt_inds, labels)
    assert res.avg_factor == max(exp_pos, 1) + max(exp_neg, 1)


def test_avg_factor_floors_each_part_at_one():
    def res(p, n):
        return SamplingResult(torch.arange(p), torch.arange(n), torch.zeros(p, dtype=torch.long), torch.zeros(p, dtype=torch.long))

    assert res(0, 0).avg_factor == 2
    assert res(0, 255).avg_factor == 256
    assert res(3, 0).avg_factor == 4
    assert res(128, 128).avg_factor == 256


def test_random_choice_distinct_and_uniform_ish():
    torch.manual_seed(0)
    gallery = torch.arange(100, 200)
    counts = torch.zeros(100)
    for _ in range(200):
        c = random_choice(gallery, 30)
        assert c.numel() == 30 and torch.unique(c).numel() == 30
        assert bool(((c >= 100) & (c < 200)).all())
        counts[c - 100] += 1
    assert float(counts.min()) > 30 and float(counts.max()) < 90  # expectation 60 each


def test_even_choice_is_evenly_spaced():
    g = torch.arange(10, 20)
    assert even_choice(g, 5).tolist() == [10, 12, 14, 16, 18]
    assert even_choice(g, 3).tolist() == [10, 13, 16]


# -------------------------------------------- RoIHead.sample: GT boxes join as positive candidates
def roi_head(**roi):
    cfg = tiny_model_config(num_classes=3)
    if roi:
        cfg = cfg.model_copy(update={"roi": cfg.roi.model_copy(update=roi)})
    return RoIHead(cfg, choice=even_choice)


def test_gt_prepended_assigned_to_themselves_and_always_positive():
    head = roi_head()
    gts = t([[10, 10, 50, 50], [60, 20, 100, 90]])
    labels = torch.tensor([2, 0])
    # proposals: none overlaps a GT by >= 0.5, so without the GTs there would be no positive at all
    props = torch.cat([t([[200, 200, 240, 240], [0, 0, 8, 8], [10, 10, 30, 30], [150, 10, 190, 40]]), torch.rand(4, 1)], 1)
    boxes, res = head.sample(props, gts, labels)
    assert torch.equal(boxes[:2], gts) and torch.equal(boxes[2:], props[:, :4])
    assert res.pos_inds.tolist() == [0, 1]
    assert res.pos_assigned_gt_inds.tolist() == [0, 1]
    assert res.pos_labels.tolist() == [2, 0]
    assert res.neg_inds.tolist() == [2, 3, 4, 5]
    assert res.avg_factor == 6


def test_gt_and_matching_proposal_both_positive_with_right_indices():
    head = roi_head()
    gts = t([[10, 10, 50, 50], [60, 20, 100, 90]])
    labels = torch.tensor([2, 0])
    # proposal 1 overlaps GT1 by 36*70 / (44*70) = 0.82, proposal 0 is background
    props = t([[200, 200, 240, 240], [56, 20, 96, 90]])
    boxes, res = head.sample(props, gts, labels)
    assert res.pos_inds.tolist() == [0, 1, 3]  # GT0, GT1, proposal 1 (candidate index 2 + 1)
    assert res.pos_assigned_gt_inds.tolist() == [0, 1, 1]
    assert res.pos_labels.tolist() == [2, 0, 0]
    assert res.neg_inds.tolist() == [2]
    assert torch.equal(boxes[3], props[1])


def test_gt_positive_even_with_many_candidates_and_without_gt_flag():
    head = roi_head()
    gts = t([[10, 10, 50, 50]])
    props = t([[300 + i, 300, 340 + i, 340] for i in range(1000)])
    boxes, res = head.sample(props, gts, torch.tensor([1]))
    assert boxes.shape[0] == 1001
    assert res.pos_inds.tolist() == [0] and res.num_neg == 511
    # with add_gt_as_proposals False nothing is prepended and there is no positive
    head = roi_head(add_gt_as_proposals=False)
    boxes, res = head.sample(props, gts, torch.tensor([1]))
    assert torch.equal(boxes, props) and res.num_pos == 0 and res.num_neg == 512


def test_empty_gt_image_samples_only_negatives():
    head = roi_head()
    props = t([[300 + i, 300, 340 + i, 340] for i in range(20)])
    boxes, res = head.sample(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert boxes.shape[0] == 20 and res.num_pos == 0 and res.neg_inds.tolist() == list(range(20))


def test_low_quality_tie_between_gts_goes_to_the_later_gt():
    """mmdet loops over GTs in order and overwrites: a candidate that is the best match of two GTs
    ends up with the later one, even when its IoU with the earlier GT is higher."""
    from swin_maskrcnn.modeling.assigner import MaxIoUAssigner

    overlaps = torch.tensor([[0.45, 0.10, 0.00], [0.40, 0.20, 0.35]])  # (G=2, N=3)
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign_from_overlaps(overlaps, torch.tensor([4, 7]))
    # candidate 0: best of GT0 (0.45) and of GT1 (0.40) -> GT1 (index 2); candidate 2: ignored (0.35 in [0.3, 0.7))
    assert res.gt_inds.tolist() == [2, 0, -1]
    assert res.labels.tolist() == [7, -1, -1]
