"""Fast paths in the FPN (inference) and the mask head against the straightforward versions they replace.

* ``add_upsampled`` (in-place broadcast add on a 2 x 2 block view) against
  ``fine + F.interpolate(coarse, mode="nearest")``: values and gradients, and the fallback for sizes
  that are not exactly twice the coarse map (while tracing, the out-of-place path is taken: the
  ONNX exporter loses in-place writes through views; ``test_onnx_export.py``'s parity tests fail
  without that guard);
* ``MaskHead(roi_feats, labels)`` (one dot product per pixel with each RoI's row of the 1x1 conv)
  against the full ``num_classes``-channel forward followed by picking the labelled channel: values,
  gradients and the mask loss; with no RoI.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swin_maskrcnn.modeling.backbone.fpn import FPN, add_upsampled
from swin_maskrcnn.modeling.config import LossConfig
from swin_maskrcnn.modeling.roi_heads.mask_head import MaskHead


@pytest.mark.parametrize("coarse_hw,fine_hw", [((5, 7), (10, 14)), ((25, 38), (50, 76)), ((5, 7), (9, 14)), ((4, 4), (7, 9))])
def test_add_upsampled_equals_interpolate_in_values_and_gradients(coarse_hw, fine_hw) -> None:
    torch.manual_seed(0)
    fine = torch.randn(2, 3, *fine_hw, requires_grad=True)
    coarse = torch.randn(2, 3, *coarse_hw, requires_grad=True)
    w = torch.randn(2, 3, *fine_hw)
    ref = fine * 1.0 + F.interpolate(coarse * 1.0, size=fine_hw, mode="nearest")
    (ref * w).sum().backward()
    ref_grads = fine.grad.clone(), coarse.grad.clone()
    fine.grad = coarse.grad = None
    got = add_upsampled(fine * 1.0, coarse * 1.0)  # "* 1.0": a fresh tensor, as a lateral conv output is
    (got * w).sum().backward()
    assert torch.equal(got, ref)
    torch.testing.assert_close(fine.grad, ref_grads[0], rtol=0, atol=0)
    torch.testing.assert_close(coarse.grad, ref_grads[1], rtol=0, atol=0)
    with torch.no_grad():  # the in-place path (exact 2x sizes): each output pixel is one addition either way
        assert torch.equal(add_upsampled(fine * 1.0, coarse), ref)


def test_add_upsampled_writes_into_fine_only_on_the_exact_2x_path() -> None:
    fine, coarse = torch.zeros(1, 1, 4, 6), torch.arange(6.0).view(1, 1, 2, 3)
    out = add_upsampled(fine, coarse)
    assert out.data_ptr() == fine.data_ptr()  # in place: no upsampled map, no new output
    with_grad = add_upsampled(torch.zeros(1, 1, 4, 6), coarse.clone().requires_grad_())
    assert torch.equal(with_grad, out) and with_grad.grad_fn is not None  # autograd: the interpolate path
    assert out[0, 0].tolist() == [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2
    odd = torch.zeros(1, 1, 3, 6)
    assert add_upsampled(odd, coarse).data_ptr() != odd.data_ptr() and odd.abs().sum() == 0


def test_fpn_equals_its_interpolate_form() -> None:
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32, 64], 16)
    feats = [torch.randn(1, c, 40 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    with torch.no_grad():  # inference: the in-place top-down adds
        laterals = [conv(f) for conv, f in zip(fpn.lateral_convs, feats)]
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        ref = [conv(x) for conv, x in zip(fpn.fpn_convs, laterals)]
        got = fpn(feats)
    for a, b in zip(got[:4], ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got[4], ref[3][:, :, ::2, ::2], rtol=0, atol=0)


def mask_head(num_classes: int = 5) -> MaskHead:
    torch.manual_seed(0)
    head = MaskHead(8, 8, num_classes, LossConfig.mmdet())
    with torch.no_grad():
        head.conv_logits.bias.normal_()
    return head


def test_mask_head_labelled_channel_equals_full_forward_then_pick() -> None:
    head = mask_head()
    feats = torch.randn(6, 8, 7, 7, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2, 1, 4])
    targets = (torch.rand(6, 14, 14) > 0.5).float()
    full = head(feats)
    assert full.shape == (6, 5, 14, 14)
    picked = full[torch.arange(6), labels]
    loss_ref = head.loss(full, targets, labels)["loss_mask"]
    (picked.sum() + loss_ref).backward()
    ref_grads = [feats.grad.clone()] + [p.grad.clone() for p in head.parameters()]
    feats.grad = None
    head.zero_grad()
    got = head(feats, labels)
    assert got.shape == (6, 14, 14)
    loss = head.loss(got, targets, labels)["loss_mask"]
    (got.sum() + loss).backward()
    torch.testing.assert_close(got, picked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    grads = [feats.grad] + [p.grad for p in head.parameters()]
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert head.conv_logits.weight.grad[:, :, 0, 0][3].abs().sum() == 0  # class 3 has no RoI: no gradient


def test_mask_head_labelled_channel_with_no_roi() -> None:
    head = mask_head()
    out = head(torch.zeros(0, 8, 7, 7), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 14, 14)
    assert float(head.loss(out, torch.zeros(0, 14, 14), torch.zeros(0, dtype=torch.long))["loss_mask"]) == 0.0



def test_mask_head_inference_in_chunks_equals_one_call() -> None:
    import swin_maskrcnn.modeling.roi_heads.mask_head as mh

    head = mask_head().eval()
    feats = torch.randn(2 * mh.INFERENCE_CHUNK + 3, 8, 7, 7)
    labels = torch.randint(0, 5, (feats.shape[0],))
    with torch.no_grad():
        chunked_full, chunked = head(feats), head(feats, labels)
    calls = []
    hook = head.upsample.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    with torch.no_grad():
        head(feats, labels)
    hook.remove()
    assert calls == [mh.INFERENCE_CHUNK, mh.INFERENCE_CHUNK, 3]
    whole_full = head(feats).detach()  # autograd on: one call
    torch.testing.assert_close(chunked_full, whole_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole_full[torch.arange(feats.shape[0]), labels], rtol=1e-5, atol=1e-5)
