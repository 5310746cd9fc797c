"""Instance masks kept at their decoded size until the pipeline's last transform: :class:`LazyMasks`.

The geometric mask transforms of the training pipelines are all pure pixel gathers: a nearest resize
takes output pixel (i, j) from source (r[i], c[j]) (torchvision's nearest index, ``floor(i * in /
out)`` in float32), a horizontal flip reverses the column order and a crop slices both. Gathers
compose, so a chain of them is ONE gather: ``mask_k = source_k[rows][:, cols]`` with the composed
row and column maps. :class:`LazyMasks` holds each instance's source bitmap, cut to its tight box at
the decoded (original) size, and the two maps; every transform only updates the maps (O(H + W)), and
:meth:`LazyMasks.dense` writes the (N, H, W) uint8 masks once, at the final size, touching only the
pixels inside each instance's box. The result is bit for bit the dense chain of
``F.resize(NEAREST)`` / ``F.horizontal_flip`` / ``F.crop`` (``tests/data/test_fast_pipeline.py``):
the nearest index of each axis is computed BY that resize (on an index-encoding image), not by a
formula that could round differently.

Why: a 640x480 COCO image goes to 1067x800 in the 1x recipe; resizing, flipping and checking each
full-image mask at that size was about two thirds of the per-image time of the dense pipeline.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .rle_box import decode_rle_box

__all__ = ["LazyMasks", "nearest_source_index"]


@functools.lru_cache(maxsize=8192)
def _nearest_index(in_size: int, out_size: int, axis: int) -> np.ndarray:
    if in_size == out_size:
        return np.arange(in_size, dtype=np.int64)
    if in_size > 65535:
        raise ValueError(f"mask side {in_size} above 65535 px")
    idx = torch.arange(in_size)
    planes = torch.stack([idx % 256, idx // 256]).to(torch.uint8)  # (2, in): low and high byte
    if axis == 0:  # rows: a (2, in, 1) mask resized to (out, 1)
        out = F.resize(tv_tensors.Mask(planes.view(2, in_size, 1)), [out_size, 1], interpolation=InterpolationMode.NEAREST)
    else:  # columns: (2, 1, in) -> (1, out)
        out = F.resize(tv_tensors.Mask(planes.view(2, 1, in_size)), [1, out_size], interpolation=InterpolationMode.NEAREST)
    out = out.as_subclass(torch.Tensor).reshape(2, out_size).to(torch.int64)
    res = (out[0] + 256 * out[1]).numpy()
    res.setflags(write=False)
    return res


def nearest_source_index(in_size: int, out_size: int, axis: int = 1) -> np.ndarray:
    """Source index (int64, read-only) of every output pixel of a nearest mask resize from ``in_size`` to
    ``out_size`` along ``axis`` (0: rows, 1: columns), as ``F.resize(mask, interpolation=NEAREST)`` picks
    it: computed by that resize itself on a two-byte index image (exact for sides up to 65535)."""
    return _nearest_index(int(in_size), int(out_size), int(axis))


def _distinct(sorted_idx: np.ndarray) -> np.ndarray:
    """The distinct values of a non-empty monotonic array, in order."""
    keep = np.ones(sorted_idx.size, dtype=bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return sorted_idx[keep]


def _unique_counts(sorted_idx: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Number of distinct values of the monotonic ``sorted_idx[s:e]`` for every (s, e) pair."""
    if sorted_idx.size == 0:
        return np.zeros_like(starts)
    new = np.ones(sorted_idx.size, dtype=np.int64)
    new[1:] = sorted_idx[1:] != sorted_idx[:-1]
    csum = np.concatenate([[0], np.cumsum(new)])
    counts = csum[ends] - csum[starts]
    # the first element of a range is always a new value of that range
    has = ends > starts
    counts[has] += 1 - new[starts[has]]
    return counts


class LazyMasks:
    """N binary masks ``source_k[rows][:, cols]`` (see the module docstring).

    ``crops[k]`` is instance k's uint8 bitmap inside its box at the source size, whose top-left corner is
    ``offsets[k]`` = (y0, x0); ``rows`` (H,) and ``cols`` (W,) map every current pixel to a source pixel.
    ``rows`` is always non-decreasing; ``cols`` is non-decreasing or, after an odd number of flips,
    non-increasing. Transforms return new objects (the crops are shared, never written)."""

    def __init__(self, crops: Sequence[np.ndarray], offsets: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 cols_reversed: bool = False) -> None:
        self.crops = list(crops)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        if len(self.crops) != self.offsets.shape[0]:
            raise ValueError(f"{len(self.crops)} crops for {self.offsets.shape[0]} offsets")
        self.rows = rows
        self.cols = cols
        self.cols_reversed = bool(cols_reversed)
        self._crop_any: Optional[np.ndarray] = None  # per crop: has a pixel (shared by derived objects)
        self._nonempty: Optional[np.ndarray] = None  # cache of nonempty() (the object is never modified)

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def from_rles(cls, rles: Sequence[dict], h: int, w: int) -> "LazyMasks":
        """From compressed COCO RLEs of an h x w image: each decoded inside its tight box only
        (:func:`~.rle_box.decode_rle_box`, pycocotools' ``toBbox`` box); an RLE that is not well formed is
        decoded whole by pycocotools instead and cut to its nonzero pixels."""
        from pycocotools import mask as mask_utils

        n = len(rles)
        crops, offsets = [], np.zeros((n, 2), dtype=np.int64)
        if n == 0:
            return cls(crops, offsets, np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64))
        boxes = np.asarray(mask_utils.toBbox(list(rles)), dtype=np.float64).reshape(-1, 4).astype(np.int64)
        for k, rle in enumerate(rles):
            counts = rle["counts"]
            counts = counts.encode("ascii") if isinstance(counts, str) else counts
            x0, y0, bw, bh = (int(v) for v in boxes[k])
            crop = decode_rle_box(counts, h, w, x0, y0, bw, bh) if isinstance(counts, bytes) else None
            if crop is None:
                with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
                    warnings.simplefilter("ignore", DeprecationWarning)
                    full = mask_utils.decode(rle)
                one = cls.from_dense(full[None, :, :] if full.ndim == 2 else np.transpose(full, (2, 0, 1))[:1])
                crop, (y0, x0) = one.crops[0], one.offsets[0]
            crops.append(crop)
            offsets[k] = (y0, x0)
        return cls(crops, offsets, np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64))

    @classmethod
    def from_dense(cls, masks: Union[np.ndarray, torch.Tensor]) -> "LazyMasks":
        """From dense (N, H, W) masks (any dtype; nonzero = foreground), each cut to its tight box."""
        if isinstance(masks, torch.Tensor):
            masks = masks.as_subclass(torch.Tensor).detach().cpu().numpy()
        masks = np.asarray(masks)
        n, h, w = masks.shape
        crops, offsets = [], np.zeros((n, 2), dtype=np.int64)
        for k in range(n):
            m = masks[k] != 0
            ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if ys.size == 0:
                crops.append(np.zeros((0, 0), dtype=np.uint8))
                continue
            crops.append(np.ascontiguousarray(m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]).astype(np.uint8))
            offsets[k] = (ys[0], xs[0])
        return cls(crops, offsets, np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64))

    # ------------------------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.crops), int(self.rows.size), int(self.cols.size))

    def __len__(self) -> int:
        return len(self.crops)

    def __repr__(self) -> str:
        return f"LazyMasks(shape={self.shape}, cols_reversed={self.cols_reversed})"

    def _new(self, crops=None, offsets=None, rows=None, cols=None, cols_reversed=None, select=None) -> "LazyMasks":
        new = LazyMasks(self.crops if crops is None else crops, self.offsets if offsets is None else offsets,
                        self.rows if rows is None else rows, self.cols if cols is None else cols,
                        self.cols_reversed if cols_reversed is None else cols_reversed)
        if self._crop_any is not None:
            new._crop_any = self._crop_any if select is None else self._crop_any[select]
        if select is not None and self._nonempty is not None:  # a selection keeps the index maps
            new._nonempty = self._nonempty[select]
        elif cols_reversed is not None and rows is None and self._nonempty is not None:  # a flip moves pixels only
            new._nonempty = self._nonempty
        return new

    # ------------------------------------------------------------------------------------ transforms
    def resized(self, new_h: int, new_w: int) -> "LazyMasks":
        """``F.resize(masks, [new_h, new_w], NEAREST)``."""
        _, h, w = self.shape
        rows = self.rows[nearest_source_index(h, new_h, 0)] if new_h != h else self.rows
        cols = self.cols[nearest_source_index(w, new_w, 1)] if new_w != w else self.cols
        return self._new(rows=rows, cols=cols)

    def flipped(self) -> "LazyMasks":
        """``F.horizontal_flip(masks)``."""
        return self._new(cols=self.cols[::-1], cols_reversed=not self.cols_reversed)

    def cropped(self, top: int, left: int, height: int, width: int) -> "LazyMasks":
        """``F.crop(masks, top, left, height, width)`` of a window inside the masks."""
        _, h, w = self.shape
        if top < 0 or left < 0 or top + height > h or left + width > w:
            raise ValueError(f"crop window {(top, left, height, width)} outside {h}x{w} masks")
        return self._new(rows=self.rows[top:top + height], cols=self.cols[left:left + width])

    def __getitem__(self, keep: Union[torch.Tensor, np.ndarray, Sequence[int]]) -> "LazyMasks":
        """The masks selected by a boolean vector or a list of indices (as ``masks[keep]``)."""
        if isinstance(keep, torch.Tensor):
            keep = keep.detach().cpu().numpy()
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64).reshape(-1)
        return self._new(crops=[self.crops[i] for i in idx], offsets=self.offsets[idx], select=idx)

    # ------------------------------------------------------------------------------------ pixels
    def _ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per mask the output rows [i0, i1) and, in ascending column order, positions [j0, j1) whose source
        lies in the mask's box; and the ascending columns."""
        n = len(self.crops)
        hs = np.array([c.shape[0] for c in self.crops], dtype=np.int64)
        ws = np.array([c.shape[1] for c in self.crops], dtype=np.int64)
        y0, x0 = self.offsets[:, 0], self.offsets[:, 1]
        i0 = np.searchsorted(self.rows, y0, side="left")
        i1 = np.searchsorted(self.rows, y0 + hs, side="left")
        asc = self.cols[::-1] if self.cols_reversed else self.cols
        j0 = np.searchsorted(asc, x0, side="left")
        j1 = np.searchsorted(asc, x0 + ws, side="left")
        if n == 0:
            i0 = i1 = j0 = j1 = np.zeros(0, dtype=np.int64)
        return i0, i1, j0, j1, asc

    def nonempty(self) -> torch.Tensor:
        """bool (N,): which masks have at least one pixel (``masks.flatten(1).ne(0).any(1)``)."""
        if self._nonempty is None:
            self._nonempty = self._compute_nonempty()
        return torch.from_numpy(self._nonempty.copy())

    def _compute_nonempty(self) -> np.ndarray:
        n = len(self.crops)
        out = np.zeros(n, dtype=bool)
        if n == 0:
            return out
        if self._crop_any is None:
            self._crop_any = np.array([bool(c.any()) for c in self.crops], dtype=bool)
        i0, i1, j0, j1, asc = self._ranges()
        hs = np.array([c.shape[0] for c in self.crops], dtype=np.int64)
        ws = np.array([c.shape[1] for c in self.crops], dtype=np.int64)
        hit = (i1 > i0) & (j1 > j0)
        # every source row and column of the box reached: the mask keeps all its pixels
        full = hit & (_unique_counts(self.rows, i0, i1) == hs) & (_unique_counts(asc, j0, j1) == ws)
        for k in np.flatnonzero(hit):
            if full[k] or not self._crop_any[k]:
                out[k] = self._crop_any[k]
                continue
            y0, x0 = self.offsets[k]
            r = _distinct(self.rows[i0[k]:i1[k]]) - y0
            c = _distinct(asc[j0[k]:j1[k]]) - x0
            out[k] = bool(self.crops[k].take(r, axis=0).take(c, axis=1).any())
        return out

    def dense(self, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The (N, H, W) uint8 masks, written once (each instance only inside its box); into ``out`` (a
        contiguous uint8 CPU tensor of that shape, e.g. in shared memory) when given."""
        n, h, w = self.shape
        if out is None:
            out_t = torch.zeros((n, h, w), dtype=torch.uint8)
        else:
            if tuple(out.shape) != (n, h, w) or out.dtype != torch.uint8 or not out.is_contiguous():
                raise ValueError(f"out must be a contiguous uint8 tensor of shape {(n, h, w)}, got "
                                 f"{out.dtype} {tuple(out.shape)}")
            out_t = out.zero_()
        if n == 0 or h == 0 or w == 0:
            return out_t
        out = out_t.numpy()
        i0, i1, j0, j1, asc = self._ranges()
        for k in range(n):
            if i1[k] <= i0[k] or j1[k] <= j0[k]:
                continue
            y0, x0 = self.offsets[k]
            r = self.rows[i0[k]:i1[k]] - y0
            c = asc[j0[k]:j1[k]] - x0
            crop = self.crops[k]
            if self.cols_reversed:
                c = c[::-1]
                a, b = w - j1[k], w - j0[k]
            else:
                a, b = j0[k], j1[k]
            if r.size >= crop.shape[0]:  # upscale: columns on the few source rows first, then whole-row copies
                block = crop.take(c, axis=1).take(r, axis=0)
            else:
                block = crop.take(r, axis=0).take(c, axis=1)
            out[k, i0[k]:i1[k], a:b] = block
        return out_t
