"""bf16 inference by a bf16 copy of the model (``acceleration.bf16_copy`` / ``inference_model``).

The copy's detections are compared with the fp32 model's on a tiny seeded model whose class
scores are made far apart (random weights give near-uniform scores, which any rounding reorders),
the fp32 model is checked to be left as it was, and the pieces the copy runs through that the fp32
path does not (the channels_last FPN add, the mask head's channels_last logits, the NHWC RoIAlign,
the top-first NMS)
are each compared with the fp32 path's own function.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from swin_maskrcnn import SwinMaskRCNN
from swin_maskrcnn.modeling.acceleration import bf16_copy, floating_dtype, inference_model
from swin_maskrcnn.modeling.backbone.fpn import add_upsampled
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.roi_heads.roi_align_nhwc import axis_weights, roi_align_nhwc
from swin_maskrcnn.modeling.roi_heads.roi_extractor import RoIExtractor


def tiny_model(sharpen: float = 1.0) -> SwinMaskRCNN:
    torch.manual_seed(0)
    model = SwinMaskRCNN(tiny_model_config(num_classes=3)).eval()
    with torch.no_grad():  # far-apart class scores, as a trained model has (ranks survive bf16 rounding)
        model.roi_head.bbox_head.fc_cls.weight.mul_(sharpen)
    return model


def scene() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 96, 128, generator=g) * 0.3
    img[:, 20:60, 10:50] += 0.6
    img[0, 40:90, 70:120] += 0.7
    return img.clamp(0, 1)


def test_bf16_copy_is_bf16_channels_last_and_leaves_the_model_as_it_was():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = bf16_copy(model)
    with torch.no_grad():
        copy([scene()])
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert floating_dtype(model) == torch.float32 and model.backbone.out_memory_format == torch.contiguous_format
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.parameters() if p.is_floating_point())
    assert not copy.training and list(copy.state_dict()) == list(before)  # same keys: a checkpoint would load
    w = copy.neck.fpn_convs[0].conv.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    feats = copy.neck(copy.backbone(torch.zeros(1, 3, 64, 96)))
    assert all(f.dtype == torch.bfloat16 and f.is_contiguous(memory_format=torch.channels_last) for f in feats)


def test_inference_model_converts_only_for_bf16():
    model = tiny_model()
    assert inference_model(model, "fp32") is model
    copy = inference_model(model, "bf16")
    assert copy is not model and floating_dtype(copy) == torch.bfloat16
    assert inference_model(copy, "bf16") is copy  # already bf16: not converted again
    with pytest.raises(ValueError, match="precision"):
        inference_model(model, "fp16")


def test_bf16_detections_match_fp32_on_a_tiny_seeded_model():
    """Top fp32 detections reappear under bf16: same class, box IoU >= 0.95, score within 0.02, mask
    IoU >= 0.9; boxes, scores and mask probabilities come back in fp32."""
    model = tiny_model(sharpen=10.0)
    img = scene()
    with torch.no_grad():
        (ref,) = model([img])
        (got,) = bf16_copy(model)([img])
    assert got["boxes"].dtype == torch.float32 and got["scores"].dtype == torch.float32
    assert got["masks"].dtype == torch.bool and got["masks"].shape[1:] == img.shape[1:]
    top = 20
    assert ref["scores"][0] - ref["scores"][top] > 0.05  # the sharpened scores are apart (1 thread: 0.99 .. 0.93)
    iou = box_iou(ref["boxes"][:top], got["boxes"])
    same = ref["labels"][:top, None] == got["labels"][None, :]
    best = torch.where(same, iou, torch.zeros_like(iou)).max(1)
    assert best.values.min() >= 0.95
    j = best.indices
    assert (ref["scores"][:top] - got["scores"][j]).abs().max() <= 0.02
    a, b = ref["masks"][:top].flatten(1), got["masks"][j].flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    assert (inter / union.clamp(min=1))[union > 0].min() >= 0.9


def test_swin_v2_bf16_copy_detects_like_fp32():
    torch.manual_seed(0)
    model = SwinMaskRCNN(tiny_model_config(num_classes=3, backbone_version=2, window_size=4)).eval()
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.weight.mul_(10.0)
        (ref,) = model([scene()])
        (got,) = bf16_copy(model)([scene()])
    iou = box_iou(ref["boxes"][:10], got["boxes"]).max(1).values
    assert got["boxes"].dtype == torch.float32 and iou.median() >= 0.95 and (iou >= 0.8).all()  # 1 thread: 8 of 10 >= 0.997


def test_fpn_maps_of_the_copy_are_the_fp32_maps_to_bf16_accuracy():
    model = tiny_model()
    x = model.preprocess([scene() * 255]).tensor
    with torch.no_grad():
        ref = model.neck(model.backbone(x))
        got = bf16_copy(model).neck(bf16_copy(model).backbone(x))
    for r, g in zip(ref, got):
        assert ((g.float() - r).norm() / r.norm()).item() < 0.03


def test_channels_last_fpn_add_is_the_nchw_add():
    torch.manual_seed(0)
    fine, coarse = torch.randn(1, 8, 6, 10).bfloat16(), torch.randn(1, 8, 3, 5).bfloat16()
    ref = fine + F.interpolate(coarse, size=(6, 10), mode="nearest")
    cl = fine.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = add_upsampled(cl, coarse.contiguous(memory_format=torch.channels_last))
    assert got is cl and torch.equal(got, ref)  # in place, the same bf16 sums


def test_mask_head_channels_last_logits_equal_the_nchw_ones():
    model = tiny_model()
    head = model.roi_head.mask_head
    torch.manual_seed(0)
    x = torch.randn(5, 64, 14, 14)
    labels = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        ref = head(x, labels)
        head.to(memory_format=torch.channels_last)
        got = head(x.contiguous(memory_format=torch.channels_last), labels)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def rois_for(n: int, h: int, w: int, stride: float, batch: int, seed: int = 0) -> torch.Tensor:
    """Random RoIs in input pixels, plus the edge cases: outside the map, zero and negative size,
    past the border, one pixel, the whole map."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * torch.tensor([w * stride, h * stride])
    wh = torch.rand(n, 2, generator=g) * 30 * stride
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    W, H = w * stride, h * stride
    edge = torch.tensor([[-5 * W, -5 * H, -4 * W, -4 * H], [0, 0, 0, 0], [10, 10, 5, 5], [-40, 10, W + 40, 30],
                         [W - 1, H - 1, W + 3, H + 3], [3, 3, 3 + stride, 3 + stride], [0, 0, W, H],
                         [W * 0.5, -H, W * 0.5 + 1, 2 * H]])
    boxes = torch.cat([edge, boxes])
    idx = torch.randint(0, batch, (boxes.shape[0], 1), generator=g).float()
    return torch.cat([idx, boxes], 1)


@pytest.mark.parametrize("size,stride", [(7, 4.0), (14, 8.0), (7, 32.0)])
def test_roi_align_nhwc_equals_torchvision_in_fp32(size, stride):
    torch.manual_seed(size)
    feat = torch.randn(2, 16, 19, 27)
    rois = rois_for(200, 19, 27, stride, batch=2)
    ref = roi_align(feat, rois, size, spatial_scale=1 / stride, sampling_ratio=0, aligned=True)
    out = torch.full((rois.shape[0], 16, size, size), float("nan"))
    roi_align_nhwc(feat.contiguous(memory_format=torch.channels_last), rois, out, torch.arange(rois.shape[0]), 1 / stride)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_axis_weights_of_a_pixel_aligned_roi():
    """A RoI spanning pixels 2..6 in 2 bins (one sample per pixel, grid 2 per bin): each bin averages
    the centres 2.5 + k with weights 1/2 on their two pixels, i.e. bin 0 = (p2 + 2 p3 + p4) / 4 and
    bin 1 = (p4 + 2 p5 + p6) / 4; the window is rounded to 8 rows and stays inside the map."""
    # aligned: a box from 2.5 to 6.5 (input pixels at scale 1) starts at 2.0 on the map
    a, first, count = axis_weights(torch.tensor([2.0]), torch.tensor([4.0]), 2, extent=20)
    dense = torch.zeros(2, 20)
    dense[:, first[0] : first[0] + count[0]] = a[0, :, : count[0]]
    want = torch.zeros(2, 20)
    want[0, 2:5] = torch.tensor([0.25, 0.5, 0.25])
    want[1, 4:7] = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(dense, want)
    assert count[0] == 8 and 0 <= first[0] <= 20 - 8


def test_extractor_pools_channels_last_bf16_maps_like_fp32():
    """The extractor's NHWC path on a bf16 copy's maps vs torchvision on the fp32 maps: bf16 accuracy."""
    torch.manual_seed(0)
    feats = [torch.randn(1, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    rois = rois_for(120, 16, 24, 4.0, batch=1)
    ext = RoIExtractor(7, [4, 8, 16, 32])
    ref = ext(feats, rois)
    got = ext([f.bfloat16().contiguous(memory_format=torch.channels_last) for f in feats], rois)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    assert (got.float() - ref).abs().max() <= 0.02 * ref.abs().max()


def test_extractor_leaves_maps_that_need_a_gradient_to_torchvision(monkeypatch):
    """Training: channels_last maps that require grad take torchvision's kernel (one backward op,
    not the per-RoI matmuls'); without grad they take the NHWC path."""
    import swin_maskrcnn.modeling.roi_heads.roi_extractor as extractor_module

    calls = []
    real = extractor_module.roi_align_nhwc
    monkeypatch.setattr(extractor_module, "roi_align_nhwc", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    feats = [torch.randn(1, 8, 64 // s, 96 // s).contiguous(memory_format=torch.channels_last) for s in (4, 8, 16, 32)]
    rois = rois_for(40, 16, 24, 4.0, batch=1)
    ext = RoIExtractor(7, [4, 8, 16, 32])
    ref = ext([f.contiguous() for f in feats], rois)
    out = ext([f.requires_grad_() for f in feats], rois)
    assert not calls and out.requires_grad
    torch.testing.assert_close(out, ref)
    with torch.no_grad():
        torch.testing.assert_close(ext(feats, rois), ref, atol=1e-5, rtol=1e-5)
    assert calls


@pytest.mark.parametrize("layout", ["spread", "piled_best", "all_piled"])
def test_top_first_nms_equals_batched_nms(layout, monkeypatch):
    """The bf16 path's NMS is the first k of torchvision's ``batched_nms`` (20 classes, 8000 boxes,
    distinct random scores, so no ties). ``piled_best``: the 3000 best-scoring boxes lie on top of
    each other, so the first 1001 candidates keep fewer than k and the threshold is lowered once;
    ``all_piled``: fewer than k are kept at all, so it ends with all candidates."""
    import swin_maskrcnn.modeling.roi_heads.bbox_head as bbox_head_module
    from torchvision.ops import batched_nms

    calls = []
    monkeypatch.setattr(bbox_head_module, "batched_nms", lambda b, s, lb, i: calls.append(len(s)) or batched_nms(b, s, lb, i))
    g = torch.Generator().manual_seed(0)
    n = 8000
    ctr = torch.rand(n, 2, generator=g) * 600 + 100
    wh = torch.rand(n, 2, generator=g) * 80 + 10
    scores = torch.rand(n, generator=g)
    piled = torch.zeros(n, dtype=torch.bool) if layout == "spread" else torch.ones(n, dtype=torch.bool)
    if layout == "piled_best":
        piled = scores >= scores.topk(3000).values[-1]
    ctr[piled] = 300 + torch.rand(int(piled.sum()), 2, generator=g) * 3
    wh[piled] = 50
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    labels = torch.randint(0, 20, (n,), generator=g)
    ref = batched_nms(boxes, scores, labels, 0.5)[:100]
    assert torch.equal(bbox_head_module.top_first_nms(boxes, scores, labels, 0.5, 100), ref)
    assert calls == {"spread": [1001], "piled_best": [1001, 4004], "all_piled": [1001, 4004, n]}[layout]
    small = bbox_head_module.top_first_nms(boxes[:500], scores[:500], labels[:500], 0.5, 100)
    assert torch.equal(small, batched_nms(boxes[:500], scores[:500], labels[:500], 0.5)[:100])  # few: batched_nms itself
