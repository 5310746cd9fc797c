"""RoIAlign on channels_last maps in the maps' own dtype: torchvision's
``roi_align(aligned=True, sampling_ratio=0)`` as two small matmuls per RoI, for bf16 inference.

Why: torchvision's CPU ``roi_align`` has no bf16 kernel and reads NCHW fp32, so a bf16 model with
channels_last maps would pay a float32 NCHW copy of every FPN level (the stride-4 one is 62 MB) and
a 49 MB float32 output per call, mostly in page faults, before the kernel's scalar per-channel
loops (together ~0.65 s of a 1.5 s Swin-T bf16 inference at 1 thread, ``docs/performance.md``).

How: bilinear sampling on the adaptive grid is separable. Per RoI, output bin (ph, pw) averages
``grid_h * grid_w`` samples (``grid = ceil(bin size)``), each a bilinear mix of 4 pixels whose
weight is a product of a row weight and a column weight, and torchvision's border rules (a sample
beyond -1 or the map's size is zero; coordinates clamped at 0 and at the last pixel) act on each
axis alone. So ``out[ph, pw, :] = sum_{r, b} AY[ph, r] AX[pw, b] F[r, b, :]`` with ``AY`` (S, rows)
the summed sample weights of each output row over the map rows (divided by ``grid_h``) and ``AX``
likewise over columns: ``AY @ window`` then ``AX @ that``, where the window is the RoI's rows and
columns of the NHWC map (a view, no copy). The weights are computed in fp32 with torchvision's
expressions; the matmuls run in the map's dtype (in fp32 the result equals torchvision's to
~1e-6, tests/modeling/test_bf16_inference.py). Inference only: ``RoIExtractor`` leaves maps that
need a gradient to torchvision's kernel (``roi_extractor.pools_nhwc``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def axis_weights(
    start: Tensor, length: Tensor, out_size: int, extent: int, step: int = 8
) -> tuple[Tensor, Tensor, Tensor]:
    """Sampling weights of ``out_size`` bins along one axis for K RoIs.

    ``start`` / ``length`` (K,): the RoI's first coordinate and size on the map (torchvision's
    ``roi_start`` and ``roi_width`` after scaling and the -0.5 offset); ``extent``: the map's size
    along the axis. Returns ``A`` (K, out_size, R) float32, ``first`` (K,) and ``count`` (K,) int64:
    bin ``p`` of RoI ``k`` is ``sum_r A[k, p, r] * map[first[k] + r]`` for ``r < count[k]``, where
    ``count`` is a multiple of ``step`` (or the whole axis) and the window lies inside the map.
    """
    k = start.shape[0]
    bin_size = length / out_size
    grid = torch.ceil(bin_size).clamp(min=0)  # sampling_ratio=0: ceil(roi size / out size) samples per bin
    g = int(grid.max().item()) if k else 0
    if g == 0:
        n = min(step, extent)
        return start.new_zeros(k, out_size, n), start.new_zeros(k, dtype=torch.long), start.new_full((k,), n, dtype=torch.long)
    p = torch.arange(out_size, device=start.device, dtype=start.dtype)
    i = torch.arange(g, device=start.device, dtype=start.dtype)
    s, b, gr = start[:, None, None], bin_size[:, None, None], grid[:, None, None]
    y = s + p[None, :, None] * b + (i[None, None, :] + 0.5) * b / gr  # (K, out_size, g), torchvision's order
    valid = (i[None, None, :] < gr) & (y >= -1.0) & (y <= extent)
    y = y.clamp(min=0)
    low = y.floor().long()
    at_end = low >= extent - 1
    low = torch.where(at_end, torch.full_like(low, extent - 1), low)
    high = torch.where(at_end, low, low + 1)
    y = torch.where(at_end, low.to(y.dtype), y)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    frac = torch.where(valid, y - low, zero)  # (a RoI of size 0 has no samples: its y is nan)
    scale = torch.where(valid, 1.0 / gr.clamp(min=1), zero)
    big = torch.iinfo(torch.long).max
    first = torch.where(valid, low, torch.full_like(low, big)).flatten(1).min(1).values
    last = torch.where(valid, high, torch.full_like(high, -1)).flatten(1).max(1).values
    first = torch.where(last >= 0, first, torch.zeros_like(first))
    # windows rounded up to a multiple of ``step`` rows (kept inside the map): a few matmul shapes,
    # so oneDNN's primitive cache holds them all instead of compiling one per RoI size
    count = (((last - first + 1).clamp(min=1) + step - 1) // step * step).clamp(max=extent)
    first = torch.minimum(first, extent - count)
    rows = int(count.max().item())
    a = start.new_zeros(k, out_size, rows)
    off = first[:, None, None]
    lo = torch.where(valid, low - off, torch.zeros_like(low))
    hi = torch.where(valid, high - off, torch.zeros_like(high))
    a.scatter_add_(2, lo, (1 - frac) * scale)
    a.scatter_add_(2, hi, frac * scale)
    return a, first, count


def roi_align_nhwc(feat: Tensor, rois: Tensor, out: Tensor, rows: Tensor, spatial_scale: float) -> None:
    """Pool ``rois`` (K, 5) = [batch index, x1, y1, x2, y2] (float32, input pixels) from ``feat``
    (N, C, H, W) channels_last (any dtype) into ``out[rows[j]]`` (out: (M, C, S, S), any layout),
    as ``torchvision.ops.roi_align(feat, rois, S, spatial_scale, sampling_ratio=0, aligned=True)``."""
    k = rois.shape[0]
    if k == 0:
        return
    n, c, h, w = feat.shape
    s = out.shape[-1]
    maps = feat.permute(0, 2, 3, 1)  # (N, H, W, C): a view of a channels_last map
    r = rois.float()
    x1, y1 = r[:, 1] * spatial_scale - 0.5, r[:, 2] * spatial_scale - 0.5
    x2, y2 = r[:, 3] * spatial_scale - 0.5, r[:, 4] * spatial_scale - 0.5
    ay, fy, ny = axis_weights(y1, y2 - y1, s, h)
    ax, fx, nx = axis_weights(x1, x2 - x1, s, w)
    ay, ax = ay.to(feat.dtype), ax.to(feat.dtype)
    plan = torch.stack([r[:, 0].long(), fy, ny, fx, nx, rows.long()], 1).tolist()  # the one host read
    for j, (b, y0, dy, x0, dx, row) in enumerate(plan):
        window = maps[b, y0 : y0 + dy, x0 : x0 + dx].reshape(dy, dx * c)  # rows strided, each contiguous: a view
        u = torch.matmul(ay[j, :, :dy], window).view(s, dx, c)  # along y: (S, dx, C)
        res = torch.matmul(ax[j, :, :dx], u)  # along x: (S, S, C), bin (ph, pw)
        out[row].copy_(res.permute(2, 0, 1))
