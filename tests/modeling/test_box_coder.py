"""DeltaXYWHBBoxCoder against closed forms and torchvision's BoxCoder (independent reference).

torchvision's coder (0.29) uses the same conventions as mmdet >= 2.0: width = x2 - x1 (no +1),
centre = x1 + w/2, weights (wx, wy, ww, wh) = 1 / stds. Its decode clamps dw/dh only from above at
``bbox_xform_clip`` (default log(1000/16), equal to our MAX_DELTA), mmdet clamps both sides.
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from swin_maskrcnn.modeling.box_coder import MAX_DELTA, DeltaXYWHBBoxCoder

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")

STDS = [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)]


def random_boxes(n: int, gen: torch.Generator, lo: float = 4.0, hi: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 500
    wh = lo + torch.rand(n, 2, generator=gen) * (hi - lo)
    return torch.cat([xy, xy + wh], 1)


def test_max_delta_is_log_1000_over_16():
    assert MAX_DELTA == pytest.approx(math.log(1000 / 16), abs=1e-12)
    assert MAX_DELTA == pytest.approx(4.135166556742356, abs=1e-12)


@pytest.mark.parametrize("stds", STDS)
def test_encode_closed_form_hand_case(stds):
    coder = DeltaXYWHBBoxCoder(stds=stds)
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # w 10, h 20, centre (5, 10): no +1
    gt = torch.tensor([[5.0, 5.0, 25.0, 45.0]])  # w 20, h 40, centre (15, 25)
    raw = torch.tensor([1.0, 0.75, math.log(2.0), math.log(2.0)])
    torch.testing.assert_close(coder.encode(anchor, gt)[0], raw / torch.tensor(stds))


def test_encode_with_means():
    coder = DeltaXYWHBBoxCoder(means=(0.5, -0.5, 0.1, 0.2), stds=(0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 45.0]])
    raw = torch.tensor([1.0, 0.75, math.log(2.0), math.log(2.0)])
    expected = (raw - torch.tensor([0.5, -0.5, 0.1, 0.2])) / torch.tensor([0.1, 0.1, 0.2, 0.2])
    d = coder.encode(anchor, gt)
    torch.testing.assert_close(d[0], expected)
    torch.testing.assert_close(coder.decode(anchor, d), gt)


@pytest.mark.parametrize("stds", STDS)
def test_encode_decode_identity_random(stds):
    gen = torch.Generator().manual_seed(3)
    coder = DeltaXYWHBBoxCoder(stds=stds)
    anchors = random_boxes(500, gen)
    gts = random_boxes(500, gen)
    deltas = coder.encode(anchors, gts)
    torch.testing.assert_close(coder.decode(anchors, deltas), gts, rtol=1e-5, atol=1e-3)
    # and the other way round: decode then encode gives the deltas back (inside the clamp)
    d = torch.randn(500, 4, generator=gen) * torch.tensor([0.3, 0.3, 0.5, 0.5]) / torch.tensor(stds)
    torch.testing.assert_close(coder.encode(anchors, coder.decode(anchors, d)), d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stds", STDS)
def test_equals_torchvision_boxcoder(stds):
    gen = torch.Generator().manual_seed(5)
    ours = DeltaXYWHBBoxCoder(stds=stds)
    tv = TVBoxCoder(weights=tuple(1.0 / s for s in stds))  # (1,1,1,1) or (10, 10, 5, 5)
    assert tv.bbox_xform_clip == pytest.approx(MAX_DELTA)
    anchors = random_boxes(400, gen)
    gts = random_boxes(400, gen)
    torch.testing.assert_close(ours.encode(anchors, gts), tv.encode_single(gts, anchors), rtol=1e-4, atol=1e-4)
    # decode, including deltas beyond the upper clamp (torchvision clamps only from above)
    d = torch.randn(400, 4, generator=gen) / torch.tensor(stds)
    d[:50, 2:] = 50.0 / torch.tensor(stds[2:])  # huge: both clamp at log(1000/16)
    torch.testing.assert_close(ours.decode(anchors, d), tv.decode_single(d, anchors), rtol=1e-4, atol=1e-3)


def test_roi_stds_match_torchvision_weights_10_10_5_5():
    anchors = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    d = torch.tensor([[1.0, -2.0, 0.5, -0.5]])
    ours = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2)).decode(anchors, d)
    # hand: dx 0.1, dy -0.2, dw 0.1, dh -0.1 on w 40, h 80, centre (30, 60)
    cx, cy, w, h = 30 + 0.1 * 40, 60 - 0.2 * 80, 40 * math.exp(0.1), 80 * math.exp(-0.1)
    torch.testing.assert_close(ours[0], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    torch.testing.assert_close(ours, TVBoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode_single(d, anchors))


@pytest.mark.parametrize("stds", STDS)
def test_decode_clamps_dw_dh_both_sides(stds):
    coder = DeltaXYWHBBoxCoder(stds=stds)
    box = torch.tensor([[100.0, 200.0, 116.0, 232.0]])  # w 16, h 32, centre (108, 216)
    d = torch.tensor([[0.0, 0.0, 1e4, -1e4]])
    out = coder.decode(box, d)[0].double()
    w, h = float(out[2] - out[0]), float(out[3] - out[1])
    assert w == pytest.approx(16 * math.exp(MAX_DELTA), rel=1e-5)  # = 1000
    assert w == pytest.approx(1000.0, rel=1e-5)
    assert h == pytest.approx(32 * math.exp(-MAX_DELTA), abs=1e-4)  # = 0.512 (float32 at y ~ 216)
    assert float((out[0] + out[2]) / 2) == pytest.approx(108.0, abs=1e-3)
    assert float((out[1] + out[3]) / 2) == pytest.approx(216.0, abs=1e-4)
    # a delta just inside the clamp is not touched
    d = torch.tensor([[0.0, 0.0, 4.0, -4.0]]) / torch.tensor([stds])
    out = coder.decode(box, d)[0].double()
    assert float(out[2] - out[0]) == pytest.approx(16 * math.exp(4.0), rel=1e-5)
    assert float(out[3] - out[1]) == pytest.approx(32 * math.exp(-4.0), abs=1e-4)


def test_decode_clips_to_height_width_in_that_order():
    coder = DeltaXYWHBBoxCoder()
    boxes = torch.tensor([[-30.0, -40.0, 200.0, 300.0], [10.0, 10.0, 20.0, 20.0], [70.0, 40.0, 95.0, 70.0]])
    out = coder.decode(boxes, torch.zeros(3, 4), max_shape=(50, 80))  # h = 50, w = 80
    expected = torch.tensor([[0.0, 0.0, 80.0, 50.0], [10.0, 10.0, 20.0, 20.0], [70.0, 40.0, 80.0, 50.0]])
    torch.testing.assert_close(out, expected)
    unclipped = coder.decode(boxes, torch.zeros(3, 4))
    torch.testing.assert_close(unclipped, boxes)


def test_decode_fp16_stays_finite_and_close_to_fp32():
    gen = torch.Generator().manual_seed(7)
    coder = DeltaXYWHBBoxCoder()
    # realistic anchors: up to the 724-px P6 anchors, inside a 1344x800 frame
    anchors = random_boxes(300, gen, lo=8.0, hi=724.0)
    d = torch.randn(300, 4, generator=gen)
    d[:100] *= 1e3  # huge deltas must be clamped before exp()
    out16 = coder.decode(anchors.half(), d.half(), max_shape=(800, 1344))
    assert out16.dtype == torch.float16
    assert torch.isfinite(out16).all()
    assert float(out16[:, [0, 2]].min()) >= 0 and float(out16[:, [0, 2]].max()) <= 1344
    assert float(out16[:, [1, 3]].min()) >= 0 and float(out16[:, [1, 3]].max()) <= 800
    out32 = coder.decode(anchors, d.half().float(), max_shape=(800, 1344))
    # ordinary deltas: fp16 rounding only (spacing 1 px near 1000)
    torch.testing.assert_close(out16[100:].float(), out32[100:], rtol=2e-3, atol=1.0)
    # without clipping, boxes up to 512 px: w * exp(MAX_DELTA) = 32,000 < fp16 max
    base = torch.tensor([[0.0, 0.0, 512.0, 512.0], [100.0, 100.0, 132.0, 164.0]]).half()
    big = torch.tensor([[0.0, 0.0, 3e4, 3e4], [1.0, -1.0, -3e4, 3e4]]).half()
    out = coder.decode(base, big)
    assert torch.isfinite(out).all()
    assert float(out[0, 2] - out[0, 0]) == pytest.approx(32000.0, rel=2e-3)


def test_encode_fp16_inputs_computed_in_fp32():
    coder = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]]).half()
    gt = torch.tensor([[5.0, 5.0, 25.0, 45.0]]).half()
    d = coder.encode(anchor, gt)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    torch.testing.assert_close(d[0], torch.tensor([10.0, 7.5, 5 * math.log(2.0), 5 * math.log(2.0)]))
