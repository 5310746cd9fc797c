"""Mask targets (RoIAlign aligned=True of the GT mask, binarised at 0.5) and mask pasting.

Pasting closed form: with grid_sample(align_corners=False) an all-ones M x M mask resampled over a
box (x0, y0, x1, y1) has the separable value v(x) v(y), where v is 1 inside, falls linearly to 0 over
half a mask cell beyond the box edge and is >= 0.5 exactly for pixel centres (i + 0.5) inside the box.
For integer boxes every edge pixel has v >= 0.85, so the pasted set is exactly the centre-inside set;
a mask whose left half is ones is >= 0.5 exactly where the centre lies left of the box's middle.
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

import torch.nn.functional as F

from swin_maskrcnn.modeling.postprocess import paste_masks, postprocess_detections, rescale_boxes
from swin_maskrcnn.modeling.roi_heads.mask_head import MaskHead

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")


def centre_inside(x0: float, y0: float, x1: float, y1: float, h: int, w: int) -> torch.Tensor:
    yc = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xc = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    return (xc >= x0) & (xc <= x1) & (yc >= y0) & (yc <= y1)


# ----------------------------------------------------------------------------------- targets
def test_targets_equal_torchvision_roi_align_aligned_binarised():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 96, 120, dtype=torch.uint8)
    masks[0, 10:50, 20:90] = 1
    masks[1] = (torch.rand(96, 120, generator=g) > 0.6).to(torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(120.0), indexing="ij")
    masks[2] = (((xx - 60) / 40) ** 2 + ((yy - 50) / 25) ** 2 <= 1).to(torch.uint8)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([80.0, 60.0])
    wh = 5 + torch.rand(12, 2, generator=g) * 35
    boxes = torch.cat([xy, xy + wh], 1)
    assigned = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0, 1, 2])
    for size in (28, 14):
        got = MaskHead.targets(boxes, masks, assigned, size)
        assert got.shape == (12, size, size) and got.dtype == torch.float32
        assert set(got.unique().tolist()) <= {0.0, 1.0}
        for i in range(12):
            ref = roi_align(
                masks[int(assigned[i])][None, None].float(), [boxes[i : i + 1]], size, spatial_scale=1.0, sampling_ratio=0, aligned=True
            )[0, 0]
            assert torch.equal(got[i], (ref >= 0.5).float()), i


def test_target_of_box_exactly_covering_a_filled_square_is_all_ones():
    masks = torch.zeros(2, 80, 100, dtype=torch.bool)
    masks[1, 20:40, 30:60] = True  # x 30..60, y 20..40
    box = torch.tensor([[30.0, 20.0, 60.0, 40.0]])
    assert torch.equal(MaskHead.targets(box, masks, torch.tensor([1]), 28), torch.ones(1, 28, 28))
    # the other GT's (empty) mask is not used by mistake ... and is all zero when selected
    assert torch.equal(MaskHead.targets(box, masks, torch.tensor([0]), 28), torch.zeros(1, 28, 28))


def test_target_half_covered_box_splits_at_its_middle():
    masks = torch.zeros(1, 80, 100, dtype=torch.uint8)
    masks[0, 20:40, 30:60] = 1
    box = torch.tensor([[15.0, 20.0, 45.0, 40.0]])  # left half (x 15..30) empty, right half full
    t = MaskHead.targets(box, masks, torch.tensor([0]), 28)[0]
    expected = torch.zeros(28, 28)
    expected[:, 14:] = 1.0
    assert torch.equal(t, expected)


def test_targets_no_positive():
    out = MaskHead.targets(torch.zeros(0, 4), torch.ones(2, 10, 10), torch.zeros(0, dtype=torch.long), 28)
    assert out.shape == (0, 28, 28)


# --------------------------------------------------------------------------------------- paste
def test_paste_all_ones_fills_exactly_the_box_pixels():
    out = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 20.0, 50.0, 60.0]]), 100, 100, 0.5)
    assert out.shape == (1, 100, 100) and out.dtype == torch.bool
    expected = torch.zeros(100, 100, dtype=torch.bool)
    expected[20:60, 10:50] = True  # rows = y, columns = x
    assert torch.equal(out[0], expected)


def test_paste_half_masks_split_at_the_box_middle():
    left = torch.zeros(28, 28)
    left[:, :14] = 1.0
    top = torch.zeros(28, 28)
    top[:14] = 1.0
    out = paste_masks(torch.stack([left, top]), torch.tensor([[10.0, 20.0, 50.0, 60.0]] * 2), 100, 100, 0.5)
    e_left = torch.zeros(100, 100, dtype=torch.bool)
    e_left[20:60, 10:30] = True
    e_top = torch.zeros(100, 100, dtype=torch.bool)
    e_top[20:40, 10:50] = True
    assert torch.equal(out[0], e_left)
    assert torch.equal(out[1], e_top)


def all_ones_profile(c: torch.Tensor, lo: float, hi: float, m: int = 28) -> torch.Tensor:
    """1-D value of a bilinearly resampled (zero-padded) all-ones length-m signal at pixel centres c."""
    u = (c - lo) / (hi - lo) * m - 0.5  # continuous mask index (align_corners=False)
    return torch.clamp(torch.minimum(u + 1, m - u), 0.0, 1.0)


def test_paste_fractional_boxes_closed_form_rectangular_image():
    """Separable closed form: value = v(x) * v(y); inside the box's edge pixels v in [0.5, 1], so the
    pasted set is the centre-inside set minus corner pixels whose product falls below 0.5."""
    g = torch.Generator().manual_seed(4)
    h, w = 90, 160
    checked = 0
    while checked < 12:
        x0, y0 = (torch.rand(2, generator=g) * torch.tensor([140.0, 70.0])).tolist()
        bw, bh = (3 + torch.rand(2, generator=g) * 60).tolist()
        b = torch.tensor([[x0, y0, x0 + bw, y0 + bh]])
        bd = b.double()[0].tolist()
        vx = all_ones_profile(torch.arange(w, dtype=torch.float64) + 0.5, bd[0], bd[2])
        vy = all_ones_profile(torch.arange(h, dtype=torch.float64) + 0.5, bd[1], bd[3])
        value = vy[:, None] * vx[None, :]
        if bool(((value - 0.5).abs() < 1e-3).any()):
            continue  # float32 rounding right at the threshold is not the point
        out = paste_masks(torch.ones(1, 28, 28), b, h, w, 0.5)[0]
        assert torch.equal(out, value >= 0.5), bd
        inside = centre_inside(*bd, h, w)
        assert not bool((out & ~inside).any())  # never beyond the box
        edge = inside & ~out
        assert int(edge.sum()) <= 4  # at most the four corner pixels drop out
        checked += 1


def test_paste_box_partly_outside_the_image():
    out = paste_masks(torch.ones(2, 28, 28), torch.tensor([[-10.0, 90.0, 30.0, 130.0], [80.0, -5.0, 140.0, 8.0]]), 100, 100, 0.5)
    e0 = torch.zeros(100, 100, dtype=torch.bool)
    e0[90:, :30] = True
    e1 = torch.zeros(100, 100, dtype=torch.bool)
    e1[:8, 80:] = True
    assert torch.equal(out[0], e0) and torch.equal(out[1], e1)


def test_paste_threshold_and_order_of_masks():
    probs = torch.stack([torch.full((28, 28), 0.6), torch.full((28, 28), 0.4), torch.ones(28, 28)])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 50.0]])
    out = paste_masks(probs, boxes, 64, 64, 0.5)
    assert int(out[0].sum()) == 100 and int(out[1].sum()) == 0
    assert int(out[2].sum()) == 10 * 20 and bool(out[2, 30:50, 30:40].all())
    # a lower threshold admits the 0.4 mask
    assert int(paste_masks(probs[1:2], boxes[1:2], 64, 64, 0.3).sum()) == 100


def test_paste_zero_size_and_empty_boxes_do_not_crash():
    out = paste_masks(torch.ones(3, 28, 28), torch.tensor([[10.0, 10.0, 10.0, 10.0], [5.0, 7.0, 5.0, 30.0], [200.0, 200.0, 210.0, 210.0]]), 50, 60, 0.5)
    assert out.shape == (3, 50, 60)
    assert not bool(out[2].any())  # entirely outside the image
    # a degenerate box paints at most the pixels next to it
    assert int(out[0].sum()) <= 4
    assert not bool(out[1, :, 10:].any())
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), 50, 60, 0.5)
    assert out.shape == (0, 50, 60)


def test_paste_resampled_content_follows_the_mask_not_a_transpose():
    """An L-shaped mask in a non-square box: rows follow y and columns x."""
    m = torch.zeros(28, 28)
    m[:, :7] = 1.0  # left quarter
    m[21:, :] = 1.0  # bottom quarter
    out = paste_masks(m[None], torch.tensor([[0.0, 0.0, 40.0, 80.0]]), 80, 40, 0.5)[0]  # w 40, h 80
    expected = torch.zeros(80, 40, dtype=torch.bool)
    expected[:, :10] = True
    expected[60:, :] = True
    assert torch.equal(out, expected)
    assert math.isclose(float(out.float().mean()), (10 * 80 + 30 * 20) / 3200)


# ------------------------------------------------------------------ vectorised vs per-box reference
def reference_paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int, threshold: float) -> torch.Tensor:
    """The straightforward per-box paste (mmdet's CPU ``_do_paste_mask`` with skip_empty, one box at
    a time, host reads per box): the version :func:`paste_masks` replaced."""
    k = mask_probs.shape[0]
    out = torch.zeros(k, img_h, img_w, dtype=torch.bool)
    for i in range(k):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        xs, ys = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        xe, ye = min(int(math.ceil(x1)) + 1, img_w), min(int(math.ceil(y1)) + 1, img_h)
        if xe <= xs or ye <= ys:
            continue
        bx0, by0, bx1, by1 = boxes[i].float()
        gy = (torch.arange(ys, ye, dtype=torch.float32) + 0.5 - by0) / (by1 - by0) * 2 - 1
        gx = (torch.arange(xs, xe, dtype=torch.float32) + 0.5 - bx0) / (bx1 - bx0) * 2 - 1
        gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
        gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
        grid = torch.stack([gx[None, :].expand(gy.numel(), -1), gy[:, None].expand(-1, gx.numel())], dim=-1)
        pasted = F.grid_sample(mask_probs[i][None, None].float(), grid[None], align_corners=False)[0, 0]
        out[i, ys:ye, xs:xe] = pasted >= threshold
    return out


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_paste_equals_per_box_reference(seed: int):
    """Bit-identical to the per-box loop on random boxes of very different sizes (tiny, image-sized,
    partly or wholly outside, degenerate) and random soft masks with values near the threshold."""
    g = torch.Generator().manual_seed(seed)
    h, w, k = 97, 131, 60
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 10
    wh = torch.rand(k, 2, generator=g) ** 3 * torch.tensor([w * 1.2, h * 1.2])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:3, 2:] = boxes[:3, :2]  # zero-size boxes
    boxes[3] = torch.tensor([-5.0, -5.0, w + 5.0, h + 5.0])  # larger than the image
    boxes[4] = torch.tensor([w + 3.0, 10.0, w + 30.0, 40.0])  # outside
    boxes[5] = torch.tensor([10.0, 20.0, 30.0, 40.0])  # integer box
    probs = torch.sigmoid(torch.randn(k, 28, 28, generator=g) * 2)
    probs[6] = 0.5  # exactly at the threshold
    for thr in (0.5, 0.3):
        got = paste_masks(probs, boxes, h, w, thr)
        assert torch.equal(got, reference_paste_masks(probs, boxes, h, w, thr))


def test_postprocess_detections_rescales_and_pastes_the_label_channel():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 28, 28, generator=g)
    labels = torch.tensor([2, 0, 3])
    boxes = torch.tensor([[10.0, 12.0, 60.0, 50.0], [0.0, 0.0, 100.0, 80.0], [70.0, 5.0, 90.0, 75.0]])
    probs = logits[torch.arange(3), labels].sigmoid()
    out = postprocess_detections(boxes, torch.rand(3), labels, probs, (80, 100), (160, 250), 0.5)
    scaled = boxes / torch.tensor([100 / 250, 80 / 160, 100 / 250, 80 / 160])
    assert torch.equal(out["boxes"], scaled) and torch.equal(rescale_boxes(boxes, (80, 100), (160, 250)), scaled)
    assert torch.equal(out["masks"], reference_paste_masks(probs, scaled, 160, 250, 0.5))
