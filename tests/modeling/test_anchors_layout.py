"""Anchor generation and the RPN prediction/anchor/target layout: every logit and delta is trained
against and decoded with its own anchor, and every GT gets positive anchors.

Everything is checked against closed forms (mmdet AnchorGenerator: centre offset 0, no rounding,
ratio order [0.5, 1, 2], flattening (H, W, A) with the anchor innermost) or against torchvision
(``box_iou``, ``AnchorGenerator``), never against the code under test itself.

The RPN loss's targets are read back from its gradients: at zero logits the BCE gradient is
``weight * (0.5 - target) / avg_factor`` and, with smooth-L1 of a huge beta, the box gradient at zero
deltas is ``-target / (beta * avg_factor)``. That exposes exactly which anchor each target landed on.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.ops import box_iou

from swin_maskrcnn.modeling.anchors import AnchorGenerator, base_anchors
from swin_maskrcnn.modeling.config import LossConfig, RPNConfig
from swin_maskrcnn.modeling.rpn import RPNHead, flatten_level
from swin_maskrcnn.modeling.sampler import even_choice

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")

STRIDES = [4, 8, 16, 32, 64]
RATIOS = [0.5, 1.0, 2.0]
A = 3
IMG_H, IMG_W = 512, 640  # divisible by 64: every level tiles the image exactly
SIZES = [(IMG_H // s, IMG_W // s) for s in STRIDES]  # (128,160) (64,80) (32,40) (16,20) (8,10)


def closed_form_anchor(level: int, a: int, y: int, x: int) -> list[float]:
    """mmdet's anchor at (y, x) of ``level``, channel ``a``: centre (x*s, y*s), w = 8s/sqrt(r), h = 8s*sqrt(r)."""
    s = STRIDES[level]
    r = RATIOS[a]
    w = s * 8 / math.sqrt(r)
    h = s * 8 * math.sqrt(r)
    cx, cy = x * s, y * s
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@functools.lru_cache(maxsize=1)
def all_closed_form_anchors() -> torch.Tensor:
    """Every anchor of the 512x640 pyramid in mmdet order, built independently (float64)."""
    out = []
    for lvl, (h, w) in enumerate(SIZES):
        s = STRIDES[lvl]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
        r = torch.tensor(RATIOS, dtype=torch.float64)
        aw, ah = s * 8 / r.sqrt(), s * 8 * r.sqrt()
        cx = (xs * s).reshape(-1, 1)
        cy = (ys * s).reshape(-1, 1)
        out.append(torch.stack([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2], -1).reshape(-1, 4))
    return torch.cat(out)


@functools.lru_cache(maxsize=1)
def grid_anchors() -> tuple[torch.Tensor, ...]:
    """The generator's per-level anchors for the 512x640 pyramid (built once; read-only)."""
    return tuple(AnchorGenerator(STRIDES, [8.0], RATIOS).grid_anchors(SIZES, torch.device("cpu")))


def level_offset(level: int) -> int:
    return sum(h * w * A for h, w in SIZES[:level])


def plant_position(level: int) -> tuple[int, int]:
    """A position away from the borders and with y != x (so a transposed layout cannot pass)."""
    h, w = SIZES[level]
    return h // 2 + 1, w // 3


def make_head(**rpn_overrides) -> RPNHead:
    loss_cfg = rpn_overrides.pop("loss_cfg", LossConfig.mmdet())
    return RPNHead(8, RPNConfig(**rpn_overrides), loss_cfg, choice=even_choice)


def zero_maps(batch: int = 1, requires_grad: bool = False):
    cls = [torch.zeros(batch, A, h, w, requires_grad=requires_grad) for h, w in SIZES]
    reg = [torch.zeros(batch, 4 * A, h, w, requires_grad=requires_grad) for h, w in SIZES]
    return cls, reg


# ----------------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("stride", STRIDES)
def test_base_anchors_closed_form_unrounded_ratio_major(stride):
    got = base_anchors(stride, [8.0], RATIOS).double()
    for a, r in enumerate(RATIOS):
        w, h = stride * 8 / math.sqrt(r), stride * 8 * math.sqrt(r)
        expected = torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64)
        torch.testing.assert_close(got[a], expected, rtol=0, atol=1e-4)
    # not rounded (torchvision rounds): ratio 0.5 at stride 4 has w = 32*sqrt(2) = 45.2548...
    assert abs(float(got[0, 2] - got[0, 0]) - stride * 8 * math.sqrt(2)) < 1e-3 * stride


def test_base_anchors_scale_inner_order():
    """Several scales: ratio-major, scale innermost (mmdet scale_major=True)."""
    got = base_anchors(16, [2.0, 4.0], [0.5, 2.0])
    expected_wh = [(16 * sc / math.sqrt(r), 16 * sc * math.sqrt(r)) for r in [0.5, 2.0] for sc in [2.0, 4.0]]
    for i, (w, h) in enumerate(expected_wh):
        assert float(got[i, 2] - got[i, 0]) == pytest.approx(w, rel=1e-6)
        assert float(got[i, 3] - got[i, 1]) == pytest.approx(h, rel=1e-6)


def test_grid_anchors_match_closed_form_everywhere():
    gen = AnchorGenerator(STRIDES, [8.0], RATIOS)
    got = torch.cat(gen.grid_anchors(SIZES, torch.device("cpu"))).double()
    torch.testing.assert_close(got, all_closed_form_anchors(), rtol=0, atol=1e-3)


def test_grid_anchors_vs_torchvision_same_order_differs_only_by_rounding():
    """torchvision's generator has the same (H, W, A) order and centre offset 0 but rounds its base
    anchors: equal on the integer-sized ratio-1 anchors, within 0.5 px elsewhere."""
    gen = AnchorGenerator(STRIDES, [8.0], RATIOS)
    ours = gen.grid_anchors(SIZES, torch.device("cpu"))
    tv = TVAnchorGenerator(sizes=tuple((8 * s,) for s in STRIDES), aspect_ratios=(tuple(RATIOS),) * 5)
    tv.set_cell_anchors(torch.float32, torch.device("cpu"))
    theirs = tv.grid_anchors([list(sz) for sz in SIZES], [[torch.tensor(s), torch.tensor(s)] for s in STRIDES])
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        o3, t3 = o.view(-1, A, 4), t.view(-1, A, 4).float()
        torch.testing.assert_close(o3[:, 1], t3[:, 1], rtol=0, atol=1e-4)
        assert float((o3 - t3).abs().max()) <= 0.5 + 1e-4


def test_valid_flags_reference_count_480_in_512_batch():
    """mmdet run: a 480x640 image in a 512x640 batch takes part with 76,740 anchors."""
    gen = AnchorGenerator(STRIDES, [8.0], RATIOS)
    flags = gen.valid_flags(SIZES, (480, 640), torch.device("cpu"))
    assert sum(int(f.sum()) for f in flags) == 76_740
    assert sum(f.numel() for f in flags) == 3 * sum(h * w for h, w in SIZES)
    for lvl, (f, (h, w)) in enumerate(zip(flags, SIZES)):
        s = STRIDES[lvl]
        vh, vw = math.ceil(480 / s), math.ceil(640 / s)
        grid = f.view(h, w, A)
        expected = torch.zeros(h, w, A, dtype=torch.bool)
        expected[:vh, :vw] = True
        assert torch.equal(grid, expected), f"level {lvl}"


def test_valid_flags_full_image_all_valid_and_narrow_image():
    gen = AnchorGenerator(STRIDES, [8.0], RATIOS)
    assert all(bool(f.all()) for f in gen.valid_flags(SIZES, (IMG_H, IMG_W), torch.device("cpu")))
    flags = gen.valid_flags(SIZES, (512, 200), torch.device("cpu"))
    expected = sum(A * h * min(math.ceil(200 / s), w) for s, (h, w) in zip(STRIDES, SIZES))
    assert sum(int(f.sum()) for f in flags) == expected


# ------------------------------------------------------------------------------ flatten round-trip
@pytest.mark.parametrize("level", range(5))
@pytest.mark.parametrize("a", range(A))
def test_flatten_level_planted_logit_and_delta(level, a):
    h, w = SIZES[level]
    y, x = plant_position(level)
    cls = torch.zeros(2, A, h, w)
    reg = torch.zeros(2, 4 * A, h, w)
    cls[1, a, y, x] = 1.0
    delta = torch.tensor([0.11, -0.22, 0.33, -0.44])
    reg[1, a * 4 : a * 4 + 4, y, x] = delta
    cls_f, reg_f = flatten_level(cls, reg)
    assert cls_f.shape == (2, h * w * A) and reg_f.shape == (2, h * w * A, 4)
    idx = (y * w + x) * A + a
    assert int(cls_f[1].argmax()) == idx and float(cls_f[1].sum()) == 1.0
    assert float(cls_f[0].abs().sum()) == 0.0  # image 0 untouched: batch not mixed
    torch.testing.assert_close(reg_f[1, idx], delta)
    assert int((reg_f[1].abs().sum(-1) > 0).sum()) == 1
    # ... and the anchor at that flattened index is the closed-form anchor of (a, y, x)
    anchors = grid_anchors()[level]
    got = anchors[idx].double()
    s = STRIDES[level]
    assert float((got[0] + got[2]) / 2) == pytest.approx(x * s, abs=1e-3)
    assert float((got[1] + got[3]) / 2) == pytest.approx(y * s, abs=1e-3)
    assert float(got[2] - got[0]) == pytest.approx(s * 8 / math.sqrt(RATIOS[a]), rel=1e-6)
    assert float(got[3] - got[1]) == pytest.approx(s * 8 * math.sqrt(RATIOS[a]), rel=1e-6)


def test_flatten_level_matches_explicit_loop():
    torch.manual_seed(0)
    cls = torch.randn(2, A, 3, 5)
    reg = torch.randn(2, 4 * A, 3, 5)
    cls_f, reg_f = flatten_level(cls, reg)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                for a in range(A):
                    i = (y * 5 + x) * A + a
                    assert cls_f[b, i] == cls[b, a, y, x]
                    assert torch.equal(reg_f[b, i], reg[b, a * 4 : a * 4 + 4, y, x])


# ------------------------------------------------- proposals: deltas decoded at their own anchor
PLANT_DELTA = (0.15, -0.1, -0.4, -0.3)  # distinct values: a permuted (dx, dy, dw, dh) cannot pass


def hand_decode(box: list[float], d: tuple[float, float, float, float], img_hw: tuple[int, int]) -> list[float]:
    x1, y1, x2, y2 = box
    pw, ph = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + d[0] * pw, (y1 + y2) / 2 + d[1] * ph
    w, h = pw * math.exp(d[2]), ph * math.exp(d[3])
    ih, iw = img_hw
    clip = lambda v, hi: min(max(v, 0.0), float(hi))  # noqa: E731
    return [clip(cx - w / 2, iw), clip(cy - h / 2, ih), clip(cx + w / 2, iw), clip(cy + h / 2, ih)]


@pytest.mark.parametrize("level", range(5))
@pytest.mark.parametrize("a", range(A))
def test_top_proposal_is_hand_decoded_planted_anchor(level, a):
    head = make_head(nms_pre_test=50)  # per-level top-50 keeps the NMS small; the plant is the top
    cls, reg = zero_maps(batch=2)
    for c in cls:
        c.fill_(-10.0)
    y, x = plant_position(level)
    cls[level][1, a, y, x] = 10.0
    reg[level][1, a * 4 : a * 4 + 4, y, x] = torch.tensor(PLANT_DELTA)
    # a decoy in image 0 at another place: image 1 must not see it
    cls[0][0, 0, 3, 7] = 12.0
    for m in cls + reg:
        m.requires_grad_()  # proposals come out detached: the RoI losses never reach the RPN
    anchors = list(grid_anchors())
    props = head.proposals(cls, reg, anchors, [(IMG_H, IMG_W), (IMG_H, IMG_W)], training=False)
    top = props[1][0]
    expected = hand_decode(closed_form_anchor(level, a, y, x), PLANT_DELTA, (IMG_H, IMG_W))
    torch.testing.assert_close(top[:4].double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=2e-3)
    assert float(top[4]) == pytest.approx(1 / (1 + math.exp(-10.0)), rel=1e-6)
    # image 0's top proposal is its own decoy anchor (zero delta), untouched by image 1's plant
    torch.testing.assert_close(
        props[0][0, :4].double(), torch.tensor(hand_decode(closed_form_anchor(0, 0, 3, 7), (0, 0, 0, 0), (IMG_H, IMG_W)), dtype=torch.float64), rtol=0, atol=2e-3
    )
    assert not props[0].requires_grad and not props[1].requires_grad and props[1].grad_fn is None


def test_proposals_clip_to_each_images_own_shape_and_nms_per_level():
    head = make_head()
    cls, reg = zero_maps()
    for c in cls:
        c.fill_(-10.0)
    # two identical anchors-with-boxes on different levels are not suppressed against each other;
    # P3 (stride 8) anchor at (8, 8) ratio 1 is 64x64 centred (64, 64); P2 at (16,16) ratio 1 is
    # 32x32 centred (64, 64): scaled to 64x64 with dw = dh = ln 2 it coincides with the P3 box.
    cls[1][0, 1, 8, 8] = 9.0
    cls[0][0, 1, 16, 16] = 8.0
    reg[0][0, 1 * 4 + 2 : 1 * 4 + 4, 16, 16] = math.log(2.0)
    # and a same-level duplicate that must be suppressed: P2 (16, 17) ratio 1 shifted back by 4px
    cls[0][0, 1, 16, 17] = 7.0
    reg[0][0, 4:8, 16, 17] = torch.tensor([-4 / 32, 0.0, math.log(2.0), math.log(2.0)])
    anchors = list(grid_anchors())
    props = head.proposals(cls, reg, anchors, [(100, 90)], training=False)[0]
    top3 = props[:3]
    torch.testing.assert_close(top3[0, :4], torch.tensor([32.0, 32.0, 90.0, 96.0]), rtol=0, atol=1e-3)  # clipped at w=90
    torch.testing.assert_close(top3[1, :4], torch.tensor([32.0, 32.0, 90.0, 96.0]), rtol=0, atol=1e-3)
    assert float(top3[1, 4]) == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), rel=1e-6)
    assert not torch.isclose(props[:, 4], torch.sigmoid(torch.tensor(7.0))).any()  # suppressed on P2
    assert float(props[:, [0, 2]].max()) <= 90 and float(props[:, [1, 3]].max()) <= 100


# ---------------------------------------------- RPN loss targets: each lands on its own anchor
def perturbed_gt(level: int, a: int, y: int, x: int) -> list[float]:
    """A GT close to the planted anchor (IoU ~0.85): shifted and slightly rescaled."""
    x1, y1, x2, y2 = closed_form_anchor(level, a, y, x)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + 0.03 * w, (y1 + y2) / 2 - 0.02 * h
    w, h = w * 1.05, h * 0.96
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def hand_encode(anchor: list[float], gt: list[float]) -> list[float]:
    pw, ph = anchor[2] - anchor[0], anchor[3] - anchor[1]
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    dx = ((gt[0] + gt[2]) - (anchor[0] + anchor[2])) / 2 / pw
    dy = ((gt[1] + gt[3]) - (anchor[1] + anchor[3])) / 2 / ph
    return [dx, dy, math.log(gw / pw), math.log(gh / ph)]


def flat_index_to_position(i: int) -> tuple[int, int, int, int]:
    for lvl in range(5):
        n = SIZES[lvl][0] * SIZES[lvl][1] * A
        if i < n:
            pos, a = divmod(i, A)
            y, x = divmod(pos, SIZES[lvl][1])
            return lvl, a, y, x
        i -= n
    raise IndexError


@pytest.mark.parametrize("level,a", [(0, 0), (1, 2), (2, 1), (3, 0), (4, 2)])
def test_rpn_loss_targets_land_on_planted_anchor(level, a):
    beta = 1000.0
    head = make_head(loss_cfg=LossConfig.mmdet(bbox_loss="smooth_l1", smooth_l1_beta=beta))
    cls, reg = zero_maps(requires_grad=True)
    y, x = plant_position(level)
    gt = perturbed_gt(level, a, y, x)
    anchors = list(grid_anchors())
    losses, stats = head.loss(cls, reg, anchors, [torch.tensor([gt])], [(IMG_H, IMG_W)])
    (losses["loss_rpn_cls"] + losses["loss_rpn_bbox"]).backward()

    # independent expectation: MaxIoU rule on closed-form anchors with torchvision's IoU
    iou = box_iou(torch.tensor([gt], dtype=torch.float64), all_closed_form_anchors())[0]
    best = float(iou.max())
    expected_pos = set(torch.nonzero((iou >= 0.7) | (iou == iou.max())).flatten().tolist())
    planted = level_offset(level) + (y * SIZES[level][1] + x) * A + a
    assert int(iou.argmax()) == planted and best > 0.8
    assert planted in expected_pos and len(expected_pos) < 128  # all positives get sampled

    avg = 256.0  # max(pos,1) + max(neg,1) with 256 samples
    gpos, gneg = [], []
    for lvl in range(5):
        g = cls[lvl].grad[0].permute(1, 2, 0)  # (H, W, A)
        for yy, xx, aa in torch.nonzero(g < 0).tolist():
            gpos.append(level_offset(lvl) + (yy * SIZES[lvl][1] + xx) * A + aa)
        gneg.append(int((g > 0).sum()))
        nz = g[g != 0].abs()
        torch.testing.assert_close(nz, torch.full_like(nz, 0.5 / avg))
    assert set(gpos) == expected_pos
    assert sum(gneg) == 256 - len(expected_pos)
    assert stats["rpn_num_pos"].item() == len(expected_pos)
    # the planted position's delta channels carry exactly the hand-encoded target
    g_reg = reg[level].grad[0, a * 4 : a * 4 + 4, y, x].double()
    target = -g_reg * beta * avg
    torch.testing.assert_close(target, torch.tensor(hand_encode(closed_form_anchor(level, a, y, x), gt), dtype=torch.float64), rtol=1e-4, atol=1e-6)
    # no delta gradient away from positive anchors
    for lvl in range(5):
        g = reg[lvl].grad[0].view(A, 4, *SIZES[lvl]).permute(2, 3, 0, 1)  # (H, W, A, 4)
        hit = torch.nonzero(g.abs().sum(-1) > 0).tolist()
        for yy, xx, aa in hit:
            assert level_offset(lvl) + (yy * SIZES[lvl][1] + xx) * A + aa in expected_pos


def test_rpn_loss_exact_positive_only_planted_with_strict_threshold():
    """With pos_iou_thr 0.9 and the GT equal to one anchor, that anchor is the only positive."""
    head = make_head(pos_iou_thr=0.9)
    cls, reg = zero_maps(requires_grad=True)
    level, a = 2, 0
    y, x = plant_position(level)
    gt = torch.tensor([closed_form_anchor(level, a, y, x)])
    anchors = list(grid_anchors())
    losses, stats = head.loss(cls, reg, anchors, [gt], [(IMG_H, IMG_W)])
    losses["loss_rpn_cls"].backward()
    assert stats["rpn_num_pos"].item() == 1
    neg_grad = [(lvl, torch.nonzero(cls[lvl].grad[0] < 0).tolist()) for lvl in range(5)]
    assert [(lvl, p) for lvl, p in neg_grad if p] == [(level, [[a, y, x]])]


def test_rpn_loss_never_samples_anchors_outside_the_images_own_area():
    """480x640 image in a 512x640 batch: no sampled anchor on padded positions (valid flags)."""
    head = make_head()
    cls, reg = zero_maps(batch=2, requires_grad=True)
    gts = [torch.tensor([[100.0, 120.0, 300.0, 260.0]]), torch.tensor([[10.0, 300.0, 200.0, 470.0]])]
    anchors = list(grid_anchors())
    losses, stats = head.loss(cls, reg, anchors, gts, [(IMG_H, IMG_W), (480, 640)])
    losses["loss_rpn_cls"].backward()
    for lvl, s in enumerate(STRIDES):
        vh = math.ceil(480 / s)
        g1 = cls[lvl].grad[1]
        assert float(g1[:, vh:].abs().sum()) == 0.0, f"level {lvl}: padded rows sampled"
    total = sum(int((c.grad[b] != 0).sum()) for c in cls for b in range(2))
    assert total == 512  # 256 samples per image


def test_head_anchors_follow_feature_map_sizes():
    """``RPNHead.anchors`` (what the model calls) uses each level's own map size and stride."""
    head = make_head()
    feats = [torch.zeros(1, 8, h, w) for h, w in SIZES]
    for got, ref in zip(head.anchors(feats), grid_anchors()):
        assert torch.equal(got, ref)
    assert head.anchor_generator.num_anchors == A
