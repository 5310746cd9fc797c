"""The fast Swin paths against the straightforward versions they replaced (kept here as references).

* window plan (one gather for pad + cyclic roll + window partition, one for the way back) against
  ``F.pad`` + ``torch.roll`` + view/permute partition and the inverse: bitwise equal;
* shift mask (vectorised region labels) against the 3 x 3 slice-assignment loop: equal;
* ``ShiftWindowMSA`` (one additive bias + mask tensor, 4-D SDPA for every block) against the
  explicit ``softmax(q k^T * scale + bias + mask) v`` on the padded, rolled, partitioned map, in
  values and gradients;
* ``PatchMerging`` (view/permute) against ``nn.Unfold``: bitwise equal.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swin_maskrcnn.modeling.backbone.swin import (
    PatchMerging,
    ShiftWindowMSA,
    WindowMSA,
    shift_window_mask,
    window_plan,
)


# ------------------------------------------------------------------------------------ references
def ref_shift_mask(H_pad: int, W_pad: int, w: int, s: int) -> Tensor:
    region = torch.zeros((1, H_pad, W_pad, 1))
    label = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            region[:, hs, ws, :] = label
            label += 1
    rw = ref_partition(region, w).squeeze(-1)
    diff = rw.unsqueeze(1) - rw.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def ref_partition(x: Tensor, w: int) -> Tensor:
    B, H, W, C = x.shape
    return x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def ref_reverse(windows: Tensor, w: int, H: int, W: int) -> Tensor:
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def ref_windows(x: Tensor, H: int, W: int, w: int, s: int) -> Tensor:
    B, _, C = x.shape
    x = x.view(B, H, W, C)
    x = F.pad(x, (0, 0, 0, (-W) % w, 0, (-H) % w))
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    return ref_partition(x, w)


def ref_shift_window_msa(m: ShiftWindowMSA, x: Tensor, hw: tuple[int, int]) -> Tensor:
    """mmdet's ShiftWindowMSA written out: pad, roll, partition, explicit attention, reverse, roll, crop."""
    a: WindowMSA = m.w_msa
    B, L, C = x.shape
    H, W = hw
    w, s = m.window_size, m.shift_size
    H_pad, W_pad = H + (-H) % w, W + (-W) % w
    win = ref_windows(x, H, W, w, s)
    BW, N, _ = win.shape
    nH, hd = a.num_heads, C // a.num_heads
    qkv = a.qkv(win).reshape(BW, N, 3, nH, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * a.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    bias = a.relative_position_bias_table[a.relative_position_index.view(-1)].view(N, N, nH).permute(2, 0, 1)
    attn = attn + bias.unsqueeze(0)
    if s:
        mask = ref_shift_mask(H_pad, W_pad, w, s)
        nW = mask.shape[0]
        attn = attn.view(BW // nW, nW, nH, N, N) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, nH, N, N)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(BW, N, C)
    out = ref_reverse(a.proj(out), w, H_pad, W_pad)
    if s:
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
    return out[:, :H, :W, :].reshape(B, H * W, C)


def ref_patch_merging(m: PatchMerging, x: Tensor, hw: tuple[int, int]) -> Tensor:
    B, L, C = x.shape
    H, W = hw
    x = x.view(B, H, W, C).permute(0, 3, 1, 2)
    x = F.pad(x, (0, W % 2, 0, H % 2))
    x = nn.Unfold(kernel_size=2, stride=2)(x).transpose(1, 2)
    return m.reduction(m.norm(x))


SIZES = [(14, 21, 7, 3), (13, 19, 7, 3), (10, 12, 7, 0), (5, 6, 7, 3), (3, 3, 7, 3), (9, 9, 3, 1), (8, 12, 4, 2)]


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("H,W,w,s", SIZES)
def test_shift_mask_equals_slice_loop(H: int, W: int, w: int, s: int) -> None:
    if s == 0:
        pytest.skip("no mask without shift")
    H_pad, W_pad = H + (-H) % w, W + (-W) % w
    assert torch.equal(shift_window_mask(H_pad, W_pad, w, s), ref_shift_mask(H_pad, W_pad, w, s))


@pytest.mark.parametrize("H,W,w,s", SIZES)
def test_window_plan_equals_pad_roll_partition_and_back(H: int, W: int, w: int, s: int) -> None:
    g = torch.Generator().manual_seed(H * 100 + W)
    x = torch.randn(2, H * W, 5, generator=g)
    plan = window_plan(H, W, w, s, x.device)
    xp = torch.cat([x, x.new_zeros(2, 1, 5)], 1) if plan.padded else x
    got = xp.index_select(1, plan.gather).view(-1, w * w, 5)
    expected = ref_windows(x, H, W, w, s)
    assert torch.equal(got, expected)
    assert plan.num_windows * 2 == expected.shape[0]
    # back: windows -> reverse -> roll back -> crop equals the scatter index
    H_pad, W_pad = H + (-H) % w, W + (-W) % w
    y = torch.randn(expected.shape, generator=g)
    back = ref_reverse(y, w, H_pad, W_pad)
    back = torch.roll(back, shifts=(s, s), dims=(1, 2)) if s else back
    assert torch.equal(y.view(2, -1, 5).index_select(1, plan.scatter), back[:, :H, :W].reshape(2, H * W, 5))
    assert window_plan(H, W, w, s, x.device) is plan  # built once per size


@pytest.mark.parametrize("H,W,w,s", SIZES)
@pytest.mark.parametrize("batch", [1, 2])
def test_shift_window_msa_equals_explicit_reference(H: int, W: int, w: int, s: int, batch: int) -> None:
    torch.manual_seed(0)
    m = ShiftWindowMSA(12, 3, w, s)
    with torch.no_grad():
        m.w_msa.relative_position_bias_table.normal_()
        m.w_msa.qkv.weight.normal_(std=0.3)
        m.w_msa.qkv.bias.normal_(std=0.1)
    x = torch.randn(batch, H * W, 12, requires_grad=True)
    got = m(x, (H, W))
    (got * torch.linspace(-1, 1, got.numel()).view_as(got)).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    ref = ref_shift_window_msa(m, x, (H, W))
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    ref_grads = [x.grad] + [p.grad for p in m.parameters()]
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("H,W", [(8, 12), (7, 9), (5, 4), (1, 1)])
def test_patch_merging_equals_unfold(H: int, W: int) -> None:
    torch.manual_seed(0)
    m = PatchMerging(6, 12)
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    x = torch.randn(2, H * W, 6)
    got, hw = m(x, (H, W))
    assert hw == ((H + 1) // 2, (W + 1) // 2)
    assert torch.equal(got, ref_patch_merging(m, x, (H, W)))


def test_attention_path_fused_sdpa_without_autograd_explicit_with_autograd_on_cpu(monkeypatch) -> None:
    """The fused CPU kernel has no gradient for the learned bias, so with autograd SDPA would fall
    back to its slower math path: the explicit ops are used instead (same function, see the tests above)."""
    import swin_maskrcnn.modeling.backbone.swin as swin

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(swin.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = ShiftWindowMSA(12, 3, 3, 1)
    x = torch.randn(1, 36, 12)
    with torch.no_grad():
        m(x, (6, 6))
    assert calls == [1]
    m(x, (6, 6)).sum().backward()
    assert calls == [1]
