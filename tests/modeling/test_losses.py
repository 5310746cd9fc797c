"""Loss values and normalisation on hand-computed cases (mmdet's rules, reference section 1.4).

- element values of BCE / CE / L1 / smooth-L1 against closed forms, reductions and avg_factor;
- RPN: the loss recomputed from scratch (closed-form anchors layout, torchvision IoU, the MaxIoU
  rule, even sampling, softplus BCE, hand-encoded deltas) on a three-image batch with different
  pad shapes and an empty-GT image; positive-weight semantics;
- RoI box head: CE divided by the sampled count, L1 divided by sampled RoIs or by positives;
- mask: mean pixel BCE over positive RoIs (ln 2 at zero logits, not 784 ln 2);
- RoIHead.loss end to end with zeroed output layers, so every component has a closed form.
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from swin_maskrcnn.modeling.roi_heads.bbox_head import BBoxHead
from swin_maskrcnn.modeling.config import LossConfig, tiny_model_config
from swin_maskrcnn.modeling.losses import box_regression_loss, reduce_loss, sigmoid_bce, softmax_ce
from swin_maskrcnn.modeling.roi_heads.mask_head import MaskHead
from swin_maskrcnn.modeling.roi_heads.roi_head import RoIHead
from swin_maskrcnn.modeling.rpn import RPNHead
from swin_maskrcnn.modeling.sampler import even_choice

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")

EPS = torch.finfo(torch.float32).eps
LN2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


# ------------------------------------------------------------------------------ element functions
def test_default_eps_is_float32_machine_eps():
    assert LossConfig().eps == EPS


def test_reduce_loss_modes():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert torch.equal(reduce_loss(x, "none", None, 1e-6), x)
    assert float(reduce_loss(x, "sum", None, 1e-6)) == 12.0
    assert float(reduce_loss(x, "sum", 100.0, 1e-6)) == 12.0  # avg_factor ignored for sum
    assert float(reduce_loss(x, "mean", None, 1e-6)) == 3.0
    assert float(reduce_loss(x, "mean", 8.0, 0.0)) == 1.5
    assert float(reduce_loss(x, "mean", 8.0, 1e-3)) == pytest.approx(12.0 / 8.001, rel=1e-7)
    with pytest.raises(ValueError):
        reduce_loss(x, "avg", None, 1e-6)  # type: ignore[arg-type]


def test_eps_keeps_zero_over_zero_finite():
    empty = torch.zeros(0, requires_grad=True)
    for avg in (None, 0.0):
        out = reduce_loss(empty, "mean", avg, EPS)
        assert torch.isfinite(out) and float(out.detach()) == 0.0
        out.backward()
    out = reduce_loss(torch.zeros(5), "mean", 0.0, EPS)
    assert torch.isfinite(out) and float(out) == 0.0


def test_sigmoid_bce_elements_weights_reductions():
    logits = torch.tensor([0.0, 2.0, -3.0, 40.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = torch.tensor([LN2, math.log1p(math.exp(2.0)), math.log1p(math.exp(3.0)), math.log1p(math.exp(-40.0))])
    torch.testing.assert_close(sigmoid_bce(logits, targets, reduction="none"), expected)
    w = torch.tensor([2.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(sigmoid_bce(logits, targets, w, reduction="none"), expected * w)
    torch.testing.assert_close(sigmoid_bce(logits, targets, w, reduction="sum"), (expected * w).sum())
    torch.testing.assert_close(sigmoid_bce(logits, targets, w, reduction="mean"), (expected * w).mean())
    torch.testing.assert_close(
        sigmoid_bce(logits, targets, w, reduction="mean", avg_factor=3.0, eps=EPS), (expected * w).sum() / (3.0 + EPS)
    )
    # fp16 logits are computed in fp32 (no overflow of exp)
    out = sigmoid_bce(torch.tensor([60000.0]).half(), torch.tensor([0.0]), reduction="sum")
    assert out.dtype == torch.float32 and float(out) == pytest.approx(60000.0, rel=1e-3)


def test_softmax_ce_elements():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]])
    labels = torch.tensor([2, 1, 1])
    lse = [math.log(math.e + math.e**2 + math.e**3), math.log(3.0), math.log(math.exp(5) + math.exp(-5) + 1)]
    expected = torch.tensor([lse[0] - 3.0, lse[1], lse[2] + 5.0])
    torch.testing.assert_close(softmax_ce(logits, labels, reduction="none"), expected)
    w = torch.tensor([1.0, 3.0, 0.5])
    torch.testing.assert_close(softmax_ce(logits, labels, w, "mean", 10.0, 0.0), (expected * w).sum() / 10.0)
    assert float(softmax_ce(logits, labels)) == pytest.approx(float(expected.mean()), rel=1e-6)


def test_l1_and_smooth_l1_elements():
    pred = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    target = torch.tensor([0.5, -2.0, 1.0, 0.05, 1.0])
    l1 = box_regression_loss(pred, target, kind="l1", reduction="none")
    torch.testing.assert_close(l1, torch.tensor([0.5, 2.0, 1.0, 0.05, 0.0]))
    sl1 = box_regression_loss(pred, target, kind="smooth_l1", beta=1.0, reduction="none")
    # 0.5 d^2 / beta for d < beta, d - beta/2 otherwise (d = 1 takes the second branch: 0.5 either way)
    torch.testing.assert_close(sl1, torch.tensor([0.125, 1.5, 0.5, 0.00125, 0.0]))
    b = 1 / 9
    sl1 = box_regression_loss(pred, target, kind="smooth_l1", beta=b, reduction="none")
    torch.testing.assert_close(sl1, torch.tensor([0.5 - b / 2, 2.0 - b / 2, 1.0 - b / 2, 0.5 * 0.05**2 / b, 0.0]))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(box_regression_loss(pred, target, w, "l1", reduction="sum"), torch.tensor(2.55))
    torch.testing.assert_close(box_regression_loss(pred, target, w, "l1", reduction="mean", avg_factor=5.0, eps=0.0), torch.tensor(0.51))
    with pytest.raises(ValueError):
        box_regression_loss(pred, target, kind="giou")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- RPN, from scratch
STRIDES = [4, 8, 16, 32, 64]
RATIOS = [0.5, 1.0, 2.0]
SIZES = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # a 64x96 batch (P6 = stride-2 pool of P5)
PAD_SHAPES = [(64, 96), (64, 64), (64, 96)]
GTS = [
    torch.tensor([[10.0, 12.0, 40.0, 44.0], [50.0, 20.0, 90.0, 60.0], [3.0, 30.0, 11.0, 62.0]]),
    torch.tensor([[30.0, 8.0, 60.0, 40.0]]),
    torch.zeros(0, 4),  # empty-GT image: only negatives, avg_factor part 1 + 256
]


def rpn_head(**loss_kw) -> RPNHead:
    cfg = tiny_model_config(losses=LossConfig.mmdet(**loss_kw))
    return RPNHead(cfg.fpn_channels, cfg.rpn, cfg.losses, choice=even_choice)


def random_maps(seed: int):
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(3, 3, h, w, generator=g) for h, w in SIZES]
    reg = [0.3 * torch.randn(3, 12, h, w, generator=g) for h, w in SIZES]
    return cls, reg


def flat_positions():
    """(level, a, y, x) of every flattened anchor in mmdet order: level, then y, x, ratio."""
    out = []
    for lvl, (h, w) in enumerate(SIZES):
        for y in range(h):
            for x in range(w):
                for a in range(3):
                    out.append((lvl, a, y, x))
    return torch.tensor(out)


def ref_assign(iou: torch.Tensor) -> torch.Tensor:
    """mmdet MaxIoUAssigner (0.7 / 0.3 / min_pos 0.3, low-quality matches) written from the spec."""
    g, n = iou.shape
    inds = torch.full((n,), -1, dtype=torch.long)
    if g == 0:
        return torch.zeros(n, dtype=torch.long)
    mx, am = iou.max(0)
    inds[mx < 0.3] = 0
    inds[mx >= 0.7] = am[mx >= 0.7] + 1
    for i in range(g):
        best = iou[i].max()
        if best >= 0.3:
            inds[iou[i] == best] = i + 1
    return inds


def ref_rpn_loss(cls, reg, anchors, pos_weight: float, num: int = 256, frac: float = 0.5):
    """Returns (loss_cls, loss_bbox, avg_factor, per-image positive BCE sums) recomputed independently."""
    pos_idx = flat_positions()
    lvl, a, y, x = pos_idx.unbind(1)
    strides = torch.tensor(STRIDES)[lvl]
    cls_sum = box_sum = 0.0
    avg = 0
    pos_bce_total = 0.0
    for b in range(3):
        logits = torch.stack([cls[l][b, aa, yy, xx] for l, aa, yy, xx in pos_idx.tolist()]).double()
        deltas = torch.stack([reg[l][b, aa * 4 : aa * 4 + 4, yy, xx] for l, aa, yy, xx in pos_idx.tolist()]).double()
        ph, pw = PAD_SHAPES[b]
        valid = (y < torch.ceil(ph / strides)) & (x < torch.ceil(pw / strides))
        vidx = torch.nonzero(valid).flatten()
        iou = box_iou(GTS[b], anchors[vidx])
        inds = ref_assign(iou)
        pos = torch.nonzero(inds > 0).flatten()
        if pos.numel() > int(num * frac):
            pos = even_choice(pos, int(num * frac))
        neg = torch.nonzero(inds == 0).flatten()
        if neg.numel() > num - pos.numel():
            neg = even_choice(neg, num - pos.numel())
        avg += max(pos.numel(), 1) + max(neg.numel(), 1)
        bce_pos = sum(softplus(-float(v)) for v in logits[vidx[pos]])  # target 1
        bce_neg = sum(softplus(float(v)) for v in logits[vidx[neg]])  # target 0
        cls_sum += pos_weight * bce_pos + bce_neg
        pos_bce_total += bce_pos
        for p in pos.tolist():
            anc = anchors[vidx[p]].double()
            gt = GTS[b][int(inds[p]) - 1].double()
            pw_, ph_ = anc[2] - anc[0], anc[3] - anc[1]
            t = torch.stack(
                [
                    ((gt[0] + gt[2]) - (anc[0] + anc[2])) / 2 / pw_,
                    ((gt[1] + gt[3]) - (anc[1] + anc[3])) / 2 / ph_,
                    torch.log((gt[2] - gt[0]) / pw_),
                    torch.log((gt[3] - gt[1]) / ph_),
                ]
            )
            box_sum += float((deltas[vidx[p]] - t).abs().sum())
    return cls_sum / (avg + EPS), box_sum / (avg + EPS), avg, pos_bce_total


@pytest.fixture(scope="module")
def rpn_case():
    head = rpn_head()
    anchors = head.anchor_generator.grid_anchors(SIZES, torch.device("cpu"))
    return anchors, torch.cat(anchors)


def test_rpn_loss_recomputed_independently(rpn_case):
    anchors, flat_anchors = rpn_case
    cls, reg = random_maps(0)
    losses, stats = rpn_head().loss(cls, reg, anchors, GTS, PAD_SHAPES)
    ref_cls, ref_box, avg, _ = ref_rpn_loss(cls, reg, flat_anchors, 1.0)
    assert avg == 3 * 256 + 1  # each image samples 256; the empty one counts max(0, 1) + 256
    assert float(losses["loss_rpn_cls"]) == pytest.approx(ref_cls, rel=1e-5)
    assert float(losses["loss_rpn_bbox"]) == pytest.approx(ref_box, rel=1e-5)
    assert stats["rpn_num_pos"].item() + stats["rpn_num_neg"].item() == 3 * 256


def test_rpn_zero_logits_give_ln2_and_avg_factor_counts_empty_image(rpn_case):
    anchors, _ = rpn_case
    cls = [torch.zeros(3, 3, h, w) for h, w in SIZES]
    reg = [torch.zeros(3, 12, h, w) for h, w in SIZES]
    losses, stats = rpn_head().loss(cls, reg, anchors, GTS, PAD_SHAPES)
    # 768 sampled anchors, each BCE = ln 2; avg_factor = (p0 + n0) + (p1 + n1) + (max(0,1) + 256) = 769
    assert stats["rpn_num_pos"].item() + stats["rpn_num_neg"].item() == 768
    assert float(losses["loss_rpn_cls"]) == pytest.approx(768 * LN2 / (769 + EPS), rel=1e-6)
    # only the empty image: 256 negatives / (1 + 256)
    losses, _ = rpn_head().loss([c[2:] for c in cls], [r[2:] for r in reg], anchors, GTS[2:], PAD_SHAPES[2:])
    assert float(losses["loss_rpn_cls"]) == pytest.approx(256 * LN2 / 257, rel=1e-6)
    assert float(losses["loss_rpn_bbox"]) == 0.0


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_rpn_pos_weight_changes_numerator_only(rpn_case, w):
    anchors, flat_anchors = rpn_case
    cls, reg = random_maps(1)
    l1, _ = rpn_head().loss(cls, reg, anchors, GTS, PAD_SHAPES)
    lw, _ = rpn_head(rpn_cls_pos_weight=w).loss(cls, reg, anchors, GTS, PAD_SHAPES)
    ref_cls, _, avg, pos_bce = ref_rpn_loss(cls, reg, flat_anchors, w)
    assert float(lw["loss_rpn_cls"]) == pytest.approx(ref_cls, rel=1e-5)
    diff = float(lw["loss_rpn_cls"] - l1["loss_rpn_cls"])
    assert diff == pytest.approx((w - 1) * pos_bce / (avg + EPS), rel=1e-4)
    assert float(lw["loss_rpn_bbox"]) == float(l1["loss_rpn_bbox"])


def test_rpn_component_weights_scale_linearly(rpn_case):
    anchors, _ = rpn_case
    cls, reg = random_maps(2)
    base, _ = rpn_head().loss(cls, reg, anchors, GTS, PAD_SHAPES)
    scaled, _ = rpn_head(rpn_loss_cls_weight=2.5, rpn_loss_bbox_weight=0.25).loss(cls, reg, anchors, GTS, PAD_SHAPES)
    assert float(scaled["loss_rpn_cls"]) == pytest.approx(2.5 * float(base["loss_rpn_cls"]), rel=1e-6)
    assert float(scaled["loss_rpn_bbox"]) == pytest.approx(0.25 * float(base["loss_rpn_bbox"]), rel=1e-6)
    off, _ = rpn_head(rpn_loss_cls_weight=0.0).loss(cls, reg, anchors, GTS, PAD_SHAPES)
    assert float(off["loss_rpn_cls"]) == 0.0


def test_rpn_smooth_l1_option(rpn_case):
    anchors, _ = rpn_case
    cls, reg = random_maps(3)
    huge_beta, _ = rpn_head(bbox_loss="smooth_l1", smooth_l1_beta=1e3).loss(cls, reg, anchors, GTS, PAD_SHAPES)
    l1, _ = rpn_head().loss(cls, reg, anchors, GTS, PAD_SHAPES)
    assert float(huge_beta["loss_rpn_bbox"]) < float(l1["loss_rpn_bbox"]) / 100  # quadratic / beta
    assert float(huge_beta["loss_rpn_cls"]) == float(l1["loss_rpn_cls"])


# ---------------------------------------------------------------------------------- RoI box head
C = 3


def bbox_head(**loss_kw) -> BBoxHead:
    return BBoxHead(4, 2, 16, C, LossConfig.mmdet(**loss_kw))


def roi_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 2, C, C, 1, C, C, C])  # background = C (last); 3 positives of 8
    cls_score = torch.randn(8, C + 1, generator=g).requires_grad_()
    bbox_pred = torch.randn(8, 4 * C, generator=g).requires_grad_()
    targets = torch.randn(8, 4, generator=g)
    targets[labels == C] = 0.0
    return cls_score, bbox_pred, labels, targets


def hand_ce(cls_score, labels):
    cls_score = cls_score.detach()
    return [math.log(sum(math.exp(float(v)) for v in row)) - float(row[int(l)]) for row, l in zip(cls_score, labels)]


def hand_box_sum(bbox_pred, labels, targets):
    bbox_pred = bbox_pred.detach()
    s = 0.0
    for i, l in enumerate(labels.tolist()):
        if l < C:
            s += float((bbox_pred[i, 4 * l : 4 * l + 4] - targets[i]).abs().sum())
    return s


def test_roi_loss_cls_divided_by_sampled_count_and_pos_weight():
    cls_score, bbox_pred, labels, targets = roi_inputs()
    ce = hand_ce(cls_score, labels)
    losses, stats = bbox_head().loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    assert float(losses["loss_cls"]) == pytest.approx(sum(ce) / (8 + EPS), rel=1e-6)
    w = torch.where(labels < C, torch.tensor(2.0), torch.tensor(1.0))
    losses_w, _ = bbox_head(roi_cls_pos_weight=2.0).loss(cls_score, bbox_pred, labels, w, targets)
    expected = sum(wi * c for wi, c in zip(w.tolist(), ce)) / (8 + EPS)  # avg_factor stays 8
    assert float(losses_w["loss_cls"]) == pytest.approx(expected, rel=1e-6)
    correct = (cls_score.argmax(1) == labels).float().mean() * 100
    assert float(stats["acc"]) == pytest.approx(float(correct))


def test_roi_loss_bbox_all_samples_vs_positives_ratio():
    cls_score, bbox_pred, labels, targets = roi_inputs(1)
    s = hand_box_sum(bbox_pred, labels, targets)
    all_s, _ = bbox_head().loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    pos_s, _ = bbox_head(roi_bbox_avg_factor="positives").loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    assert float(all_s["loss_bbox"]) == pytest.approx(s / 8, rel=1e-5)
    assert float(pos_s["loss_bbox"]) == pytest.approx(s / 3, rel=1e-5)
    assert float(pos_s["loss_bbox"] / all_s["loss_bbox"]) == pytest.approx(8 / 3, rel=1e-6)


def test_roi_loss_bbox_uses_only_gt_class_columns_of_positives():
    cls_score, bbox_pred, labels, targets = roi_inputs(2)
    losses, _ = bbox_head().loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    losses["loss_bbox"].backward()
    g = bbox_pred.grad.view(8, C, 4)
    for i, l in enumerate(labels.tolist()):
        for c in range(C):
            nz = bool((g[i, c] != 0).any())
            assert nz == (l < C and c == l), (i, c)
    torch.testing.assert_close(g[0, 0].abs(), torch.full((4,), 1 / 8))


def test_roi_loss_no_positives_and_no_samples_stay_finite_with_graph():
    cls_score, bbox_pred, _, targets = roi_inputs(3)
    labels = torch.full((8,), C)
    losses, stats = bbox_head().loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    assert float(losses["loss_bbox"]) == 0.0 and losses["loss_bbox"].requires_grad
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert float(bbox_pred.grad.abs().sum()) == 0.0
    empty_cls = torch.zeros(0, C + 1, requires_grad=True)
    empty_box = torch.zeros(0, 4 * C, requires_grad=True)
    losses, stats = bbox_head().loss(empty_cls, empty_box, torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 4))
    assert all(torch.isfinite(v) and float(v) == 0.0 for v in losses.values())
    (losses["loss_cls"] + losses["loss_bbox"]).backward()


def test_roi_component_weights_scale_linearly():
    cls_score, bbox_pred, labels, targets = roi_inputs(4)
    base, _ = bbox_head().loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    sc, _ = bbox_head(roi_loss_cls_weight=3.0, roi_loss_bbox_weight=0.5).loss(cls_score, bbox_pred, labels, torch.ones(8), targets)
    assert float(sc["loss_cls"]) == pytest.approx(3 * float(base["loss_cls"]), rel=1e-6)
    assert float(sc["loss_bbox"]) == pytest.approx(0.5 * float(base["loss_bbox"]), rel=1e-6)


# ------------------------------------------- mask: a mean over pixels, not a per-RoI sum over 28 x 28
def mask_head(**loss_kw) -> MaskHead:
    return MaskHead(4, 4, C, LossConfig.mmdet(**loss_kw), num_convs=1)


def test_mask_loss_zero_logits_is_ln2_not_784_ln2():
    logits = torch.zeros(5, C, 28, 28, requires_grad=True)
    targets = (torch.rand(5, 28, 28) > 0.5).float()
    out = mask_head().loss(logits, targets, torch.tensor([0, 1, 2, 0, 1]))["loss_mask"]
    assert float(out) == pytest.approx(LN2, rel=1e-6)
    out.backward()
    # gradient of a mean over 5 * 784 pixels: (sigmoid(0) - t) / 3920
    g = logits.grad
    assert float(g.abs().max()) == pytest.approx(0.5 / (5 * 784), rel=1e-5)


def test_mask_loss_mean_pixel_bce_of_gt_class_channel():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, C, 28, 28, generator=g)
    targets = (torch.rand(4, 28, 28, generator=g) > 0.3).float()
    labels = torch.tensor([2, 0, 0, 1])
    sel = logits[torch.arange(4), labels].double()
    t = targets.double()
    expected = (torch.clamp(sel, min=0) - sel * t + torch.log1p(torch.exp(-sel.abs()))).mean()
    out = mask_head().loss(logits, targets, labels)["loss_mask"]
    assert float(out) == pytest.approx(float(expected), rel=1e-5)
    # other classes' channels do not matter
    garbage = logits.clone()
    for i, l in enumerate(labels.tolist()):
        garbage[i, [c for c in range(C) if c != l]] = 1e3
    assert float(mask_head().loss(garbage, targets, labels)["loss_mask"]) == pytest.approx(float(out), rel=1e-6)
    assert float(mask_head(roi_loss_mask_weight=4.0).loss(logits, targets, labels)["loss_mask"]) == pytest.approx(4 * float(out), rel=1e-6)


def test_mask_loss_no_positive_is_zero_with_graph():
    logits = torch.zeros(0, C, 28, 28, requires_grad=True)
    out = mask_head().loss(logits, torch.zeros(0, 28, 28), torch.zeros(0, dtype=torch.long))["loss_mask"]
    assert float(out) == 0.0 and out.requires_grad
    out.backward()


# -------------------------------------------------------------------- RoIHead.loss end to end
IMG = 128


def roi_head(**loss_kw) -> RoIHead:
    torch.manual_seed(0)
    head = RoIHead(tiny_model_config(num_classes=C, losses=LossConfig.mmdet(**loss_kw)), choice=even_choice)
    with torch.no_grad():
        head.bbox_head.fc_cls.weight.zero_()
        head.bbox_head.fc_cls.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
        head.bbox_head.fc_reg.weight.zero_()
        head.bbox_head.fc_reg.bias.copy_(torch.linspace(-0.6, 0.6, 4 * C))
        head.mask_head.conv_logits.weight.zero_()
        head.mask_head.conv_logits.bias.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    return head


def roi_batch():
    feats = [torch.randn(2, 64, IMG // s, IMG // s) for s in (4, 8, 16, 32)]
    targets = [
        {"boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([1]), "masks": torch.ones(1, IMG, IMG, dtype=torch.uint8)},
        {
            "boxes": torch.tensor([[10.0, 10.0, 50.0, 70.0], [70.0, 60.0, 110.0, 100.0]]),
            "labels": torch.tensor([0, 2]),
            # GT0's mask is all ones, GT1's all zeros: each positive must get its own GT's mask
            "masks": torch.stack([torch.ones(IMG, IMG, dtype=torch.uint8), torch.zeros(IMG, IMG, dtype=torch.uint8)]),
        },
    ]
    proposals = [
        # IoU 36*40 / (44*40) = 0.82 -> positive for GT0 with target (-1, 0, 0, 0) under stds 0.1/0.2
        torch.tensor([[24.0, 20.0, 64.0, 60.0, 0.9], [80.0, 80.0, 120.0, 120.0, 0.8], [0.0, 0.0, 10.0, 10.0, 0.5]]),
        # IoU 56*40 / 2560 = 0.875 with GT0 -> target (0, -4/60/0.1, 0, 0); the second is background
        torch.tensor([[10.0, 14.0, 50.0, 74.0, 0.9], [90.0, 0.0, 127.0, 30.0, 0.7]]),
    ]
    # sampled: image 0 = [GT0, prop0 | prop1, prop2]; image 1 = [GT0, GT1, prop0 | prop1]
    labels = [1, 1, C, C, 0, 2, 0, C]
    box_targets = [[0, 0, 0, 0], [-1.0, 0, 0, 0], None, None, [0, 0, 0, 0], [0, 0, 0, 0], [0, -4 / 60 / 0.1, 0, 0], None]
    return feats, proposals, targets, labels, box_targets


@pytest.mark.parametrize("avg_mode", ["all_samples", "positives"])
def test_roi_head_loss_closed_form(avg_mode):
    head = roi_head(roi_bbox_avg_factor=avg_mode)
    feats, proposals, targets, labels, box_targets = roi_batch()
    losses, stats = head.loss(feats, proposals, targets)
    n, p = 8, 5
    assert stats["roi_num_pos"].item() == p and stats["roi_num_neg"].item() == n - p
    beta = head.bbox_head.fc_cls.bias.detach().double()
    lse = float(torch.logsumexp(beta, 0))
    ce = sum(lse - float(beta[l]) for l in labels)
    assert float(losses["loss_cls"]) == pytest.approx(ce / (n + EPS), rel=1e-5)
    reg = head.bbox_head.fc_reg.bias.detach().view(C, 4).double()
    box_sum = sum(float((reg[l] - torch.tensor(t, dtype=torch.float64)).abs().sum()) for l, t in zip(labels, box_targets) if l < C)
    div = n if avg_mode == "all_samples" else p
    assert float(losses["loss_bbox"]) == pytest.approx(box_sum / div, rel=1e-5)
    # constant logits b[label] per positive RoI; targets all ones except for image 1's GT1 (label 2,
    # all-zero mask); positives: [GT0, prop0] of image 0 (label 1), [GT0, GT1, prop0] of image 1
    b = [-1.0, 0.5, 2.0]
    mask = (2 * softplus(-b[1]) + 2 * softplus(-b[0]) + softplus(b[2])) / p
    assert float(losses["loss_mask"]) == pytest.approx(mask, rel=1e-5)


def test_roi_head_initial_mask_loss_is_ln2_and_weights_scale():
    feats, proposals, targets, _, _ = roi_batch()
    head = roi_head()
    with torch.no_grad():
        head.mask_head.conv_logits.bias.zero_()
    base, _ = head.loss(feats, proposals, targets)
    assert float(base["loss_mask"]) == pytest.approx(LN2, rel=1e-6)  # a mean over pixels: not 784 ln 2
    head2 = roi_head(roi_loss_cls_weight=2.0, roi_loss_bbox_weight=3.0, roi_loss_mask_weight=0.5)
    with torch.no_grad():
        head2.mask_head.conv_logits.bias.zero_()
    sc, _ = head2.loss(feats, proposals, targets)
    for k, w in (("loss_cls", 2.0), ("loss_bbox", 3.0), ("loss_mask", 0.5)):
        assert float(sc[k]) == pytest.approx(w * float(base[k]), rel=1e-5), k


def test_roi_head_loss_with_an_empty_gt_image_in_the_batch():
    """A GT-less image next to a normal one: finite losses, its RoIs are background only."""
    head = roi_head()
    feats, proposals, targets, _, _ = roi_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, IMG, IMG, dtype=torch.uint8)}
    losses, stats = head.loss(feats, proposals, targets)
    assert stats["roi_num_pos"].item() == 2 and stats["roi_num_neg"].item() == 4
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
