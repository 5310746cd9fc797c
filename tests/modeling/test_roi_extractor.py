"""Multi-level RoI extraction: output rows in input RoI order, each level pooled at its own 1/stride,
each RoI from its own image of the batch.

The main closed-form test uses "coordinate maps": on level k (stride s) channel 0 holds the image
x of each feature pixel's centre, (j + 0.5) * s, channel 1 the image y, channel 2 the level, channel
3 the image index. Bilinear interpolation reproduces a linear function exactly, and the adaptive
sampling grid is symmetric inside each bin, so with aligned=True and the right 1/stride a RoI bin
reads back the image coordinates of its own centre, the level it was mapped to and its image.
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from swin_maskrcnn.modeling.roi_heads.roi_extractor import RoIExtractor, boxes_to_rois, map_roi_levels

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")

STRIDES = [4, 8, 16, 32]
IMG = 512


def coord_maps(batch: int = 2, img: int = IMG) -> list[torch.Tensor]:
    feats = []
    for lvl, s in enumerate(STRIDES):
        n = img // s
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        f = torch.zeros(batch, 4, n, n)
        f[:, 0] = c[None, None, :]
        f[:, 1] = c[None, :, None]
        f[:, 2] = float(lvl)
        f[:, 3] = torch.arange(batch, dtype=torch.float32)[:, None, None]
        feats.append(f)
    return feats


def expected_level(w: float, h: float) -> int:
    s = math.sqrt(w * h)
    return 0 if s < 112 else 1 if s < 224 else 2 if s < 448 else 3


def bin_centres(roi: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x1, y1, x2, y2 = (float(v) for v in roi[1:])
    xs = x1 + (torch.arange(size, dtype=torch.float64) + 0.5) * (x2 - x1) / size
    ys = y1 + (torch.arange(size, dtype=torch.float64) + 0.5) * (y2 - y1) / size
    return xs, ys


# (batch, x1, y1, w, h): sizes spanning all four levels, kept where every sample point is inside
# every level's map (x >= stride / 2 = 16 px from the border for P5)
ROI_SPECS = [
    (0, 40.0, 60.0, 50.0, 30.0),  # sqrt 38.7 -> P2
    (1, 200.5, 100.25, 111.0, 113.0),  # sqrt 111.99 -> P2
    (1, 300.0, 30.0, 200.0, 80.0),  # sqrt 126 -> P3
    (0, 20.0, 20.0, 470.0, 470.0),  # -> P5
    (0, 100.0, 250.0, 220.0, 230.0),  # sqrt 225 -> P4
    (1, 64.0, 64.0, 112.0, 112.0),  # exactly 112 -> P3
    (0, 250.0, 300.0, 60.0, 180.0),  # sqrt 104 -> P2
    (1, 30.0, 40.0, 448.0, 448.0),  # exactly 448 -> P5
    (0, 17.0, 400.0, 300.0, 90.0),  # sqrt 164 -> P3
    (1, 120.0, 90.0, 300.0, 380.0),  # sqrt 337 -> P4
]


def spec_rois(order=None) -> torch.Tensor:
    specs = ROI_SPECS if order is None else [ROI_SPECS[i] for i in order]
    return torch.tensor([[b, x, y, x + w, y + h] for b, x, y, w, h in specs], dtype=torch.float32)


# ----------------------------------------------------------------------------------- level mapping
def test_level_thresholds_finest_scale_56():
    cases = [(10, 0), (111.9, 0), (112, 1), (150, 1), (223.9, 1), (224, 2), (447.9, 2), (448, 3), (1000, 3)]
    for side, lvl in cases:
        rois = torch.tensor([[0.0, 5.0, 5.0, 5.0 + side, 5.0 + side]])
        assert int(map_roi_levels(rois, 4)[0]) == lvl, side
    # non-square: sqrt(w * h), not the longer side
    rois = torch.tensor([[0.0, 0.0, 0.0, 448.0, 28.0], [0.0, 0.0, 0.0, 56.0, 224.0]])  # sqrt 112 and 112
    assert map_roi_levels(rois, 4).tolist() == [1, 1]
    assert map_roi_levels(rois, 4).dtype == torch.long
    # fewer levels clamp at the top
    assert map_roi_levels(torch.tensor([[0.0, 0.0, 0.0, 1000.0, 1000.0]]), 2).tolist() == [1]


def test_level_mapping_equals_torchvision_levelmapper():
    g = torch.Generator().manual_seed(0)
    wh = torch.exp(torch.rand(2000, 2, generator=g) * math.log(800 / 2)) * 2  # 2 .. 800 px
    xy = torch.rand(2000, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + wh], 1)
    scale = (wh[:, 0] * wh[:, 1]).sqrt()
    far = torch.stack([(scale / b - 1).abs() > 1e-4 for b in (112, 224, 448)]).all(0)  # eps placements differ
    rois = boxes_to_rois([boxes])
    ours = map_roi_levels(rois, 4)
    tv = LevelMapper(k_min=2, k_max=5)([boxes])
    assert torch.equal(ours[far], tv[far])
    assert set(ours.tolist()) == {0, 1, 2, 3}


def test_boxes_to_rois_batch_column():
    rois = boxes_to_rois([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(3, 4)])
    assert rois[:, 0].tolist() == [0, 0, 2, 2, 2]
    assert torch.equal(rois[:2, 1:], torch.ones(2, 4)) and torch.equal(rois[2:, 1:], 2 * torch.ones(3, 4))
    # score columns of proposals are dropped
    assert boxes_to_rois([torch.ones(2, 5)]).shape == (2, 5)
    assert boxes_to_rois([]).shape == (0, 5)


# ------------------------------------------------------------------------ closed-form coordinates
@pytest.mark.parametrize("size", [7, 14])
def test_each_roi_reads_its_own_coordinates_level_and_image(size):
    feats = coord_maps()
    rois = spec_rois()
    out = RoIExtractor(size, STRIDES)(feats, rois)
    assert out.shape == (len(ROI_SPECS), 4, size, size)
    for i, roi in enumerate(rois):
        xs, ys = bin_centres(roi, size)
        o = out[i].double()
        torch.testing.assert_close(o[0], xs[None, :].expand(size, size), rtol=0, atol=2e-3)
        torch.testing.assert_close(o[1], ys[:, None].expand(size, size), rtol=0, atol=2e-3)
        lvl = expected_level(float(roi[3] - roi[1]), float(roi[4] - roi[2]))
        # (bilinear weights of a constant sum to 1 up to float32 rounding)
        assert torch.allclose(o[2], torch.full_like(o[2], lvl), atol=1e-5), f"roi {i}: read level {o[2].unique().tolist()}, expected {lvl}"
        assert torch.allclose(o[3], torch.full_like(o[3], float(roi[0])), atol=1e-5), f"roi {i}: read image {o[3].unique().tolist()}"
    assert sorted({expected_level(w, h) for _, _, _, w, h in ROI_SPECS}) == [0, 1, 2, 3]


def test_output_rows_follow_shuffled_input_order():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, IMG // s, IMG // s) for s in STRIDES]
    ext = RoIExtractor(7, STRIDES)
    base = ext(feats, spec_rois())
    perm = torch.randperm(len(ROI_SPECS))
    shuffled = ext(feats, spec_rois(perm.tolist()))
    torch.testing.assert_close(shuffled, base[perm], rtol=0, atol=0)


def test_equals_torchvision_roi_align_at_each_levels_scale():
    torch.manual_seed(1)
    feats = [torch.randn(2, 5, IMG // s, IMG // s) for s in STRIDES]
    g = torch.Generator().manual_seed(2)
    n = 60
    wh = torch.exp(torch.rand(n, 2, generator=g) * math.log(600 / 4)) * 4
    xy = torch.rand(n, 2, generator=g) * (IMG - 100)
    rois = torch.cat([torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + wh], 1)
    out = RoIExtractor(7, STRIDES)(feats, rois)
    for i in range(n):
        lvl = expected_level(float(wh[i, 0]), float(wh[i, 1]))
        ref = roi_align(feats[lvl], rois[i : i + 1], 7, spatial_scale=1.0 / STRIDES[lvl], sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- planted feature on P2
def test_feature_planted_on_p2_read_by_p2_roi_only():
    feats = [torch.zeros(1, 1, IMG // s, IMG // s) for s in STRIDES]
    feats[0][0, 0, 10:14, 20:24] = 1.0  # P2 pixels: image x 80..96, y 40..56
    ext = RoIExtractor(7, STRIDES)
    rois = torch.tensor(
        [
            [0.0, 84.0, 44.0, 92.0, 52.0],  # on P2, inside the block -> exactly 1 everywhere
            [0.0, 300.0, 300.0, 340.0, 340.0],  # on P2, elsewhere -> 0
            [0.0, 28.0, -12.0, 148.0, 108.0],  # same centre (88, 48), 120 px -> P3 -> reads P3 (zeros)
            [0.0, 76.0, 36.0, 100.0, 60.0],  # on P2 covering the block and its border
        ]
    )
    out = ext(feats, rois)
    torch.testing.assert_close(out[0], torch.ones(1, 7, 7))
    assert float(out[1].abs().max()) == 0.0
    assert float(out[2].abs().max()) == 0.0
    # the wide RoI: its centre bins are 1, its corners (outside the block) are below 1
    assert float(out[3, 0, 3, 3]) == 1.0 and float(out[3, 0, 0, 0]) < 0.5
    ref = roi_align(feats[0], rois[3:4], 7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(out[3:4], ref)
    # the same block planted on P3 instead is read by the P3 RoI and not by the P2 RoIs
    feats = [torch.zeros(1, 1, IMG // s, IMG // s) for s in STRIDES]
    feats[1][0, 0, 0:13, 5:17] = 1.0  # image x 40..136, y 0..104
    out = ext(feats, rois)
    assert float(out[0].abs().max()) == 0.0
    assert float(out[2, 0, 2:5, 2:5].min()) == 1.0


def test_fifth_map_p6_is_not_used_for_rois():
    feats = coord_maps(batch=1) + [torch.full((1, 4, 8, 8), 1e6)]
    rois = torch.tensor([[0.0, 20.0, 20.0, 490.0, 490.0]])  # the largest RoI stays on P5
    out = RoIExtractor(7, STRIDES)(feats, rois)
    assert float(out.abs().max()) < 1e3 and torch.allclose(out[0, 2], torch.full((7, 7), 3.0), atol=1e-5)


# ------------------------------------------------------------------------------- batch index
def test_batch_index_picks_the_right_image_for_every_level():
    torch.manual_seed(3)
    feats = [torch.randn(3, 2, IMG // s, IMG // s) for s in STRIDES]
    ext = RoIExtractor(7, STRIDES)
    boxes = torch.tensor([[40.0, 40.0, 90.0, 90.0], [100.0, 100.0, 250.0, 250.0], [50.0, 50.0, 350.0, 350.0], [10.0, 10.0, 500.0, 500.0]])
    per_image = [ext([f[b : b + 1] for f in feats], boxes_to_rois([boxes])) for b in range(3)]
    rois = boxes_to_rois([boxes[[2, 0]], boxes[[1, 3]], boxes[[0, 1, 2, 3]]])
    out = ext(feats, rois)
    expected = torch.cat([per_image[0][[2, 0]], per_image[1][[1, 3]], per_image[2]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- empty and backward
def test_empty_rois_shape_and_backward():
    feats = [torch.randn(2, 6, IMG // s, IMG // s, requires_grad=True) for s in STRIDES]
    for size in (7, 14):
        out = RoIExtractor(size, STRIDES)(feats, torch.zeros(0, 5))
        assert out.shape == (0, 6, size, size)
        assert out.requires_grad
        (out.sum() + 0.0).backward()
    for f in feats:
        assert f.grad is not None and float(f.grad.abs().sum()) == 0.0


def test_gradient_flows_only_to_the_mapped_level_and_image():
    feats = [torch.zeros(2, 1, IMG // s, IMG // s, requires_grad=True) for s in STRIDES]
    rois = torch.tensor([[1.0, 200.0, 200.0, 350.0, 350.0]])  # 150 px -> P3, image 1
    RoIExtractor(7, STRIDES)(feats, rois).sum().backward()
    for lvl, f in enumerate(feats):
        g = f.grad
        if lvl == 1:
            assert float(g[1].sum()) == pytest.approx(49.0, rel=1e-5)  # every bin averages to weight 1
            assert float(g[0].abs().sum()) == 0.0
            nz = torch.nonzero(g[1, 0])
            # feature rows/cols touched: image 200..350 at stride 8 -> 200/8 - 0.5 = 24.5 .. 43.25
            assert int(nz.min()) >= 24 and int(nz.max()) <= 44
        else:
            assert float(g.abs().sum()) == 0.0


# ------------------------------------------------------------- sorted per-level batching vs reference
def reference_extract(ex: RoIExtractor, feats: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
    """The straightforward version the extractor replaced: one nonzero + roi_align + index_copy per level."""
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], ex.output_size, ex.output_size)
    lvls = map_roi_levels(rois, len(ex.strides), ex.finest_scale)
    for lvl in range(len(ex.strides)):
        idx = torch.nonzero(lvls == lvl).flatten()
        if idx.numel() == 0:
            out = out + feats[lvl].sum() * 0
            continue
        pooled = roi_align(feats[lvl], rois[idx], ex.output_size, spatial_scale=1.0 / ex.strides[lvl], sampling_ratio=0, aligned=True)
        out = out.index_copy(0, idx, pooled)
    return out


@pytest.mark.parametrize("n_rois,max_side", [(40, 600.0), (7, 90.0)])
def test_sorted_batching_equals_per_level_reference_values_and_gradients(n_rois: int, max_side: float):
    g = torch.Generator().manual_seed(n_rois)
    feats = [torch.randn(2, 3, 256 // s, 256 // s, generator=g, requires_grad=True) for s in (4, 8, 16, 32)]
    xy = torch.rand(n_rois, 2, generator=g) * 200
    wh = 2 + torch.rand(n_rois, 2, generator=g) * max_side
    rois = torch.cat([torch.randint(0, 2, (n_rois, 1), generator=g).float(), xy, xy + wh], 1)
    ex = RoIExtractor(7, [4, 8, 16, 32])
    got = ex(feats, rois)
    weight = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got * weight).sum(), feats)
    ref = reference_extract(ex, feats, rois)
    ref_grads = torch.autograd.grad((ref * weight).sum(), feats)
    assert torch.equal(got, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)  # scatter-add order may differ
