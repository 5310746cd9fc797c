"""Anchor fit: how well the RPN's anchors cover a data set's boxes, exactly as training sees them, and
the ``anchor_scales`` / ``anchor_ratios`` that cover them best.

The usual reason a Mask R-CNN learns nothing on small objects is visible before the first step: after
the training resize no anchor overlaps the boxes well enough to be a positive. This module measures it
the way training assigns anchors:

* **boxes**: every training instance (non-crowd, not skipped by the start-up checks) of the data set,
  resized by the training pipeline's own code (:class:`~swin_maskrcnn.data.transforms.Resize`'s
  keep-ratio size with mmcv's rounding, then :func:`~swin_maskrcnn.data.transforms.resize_boxes`:
  per-axis ratio and clipping), without the random flip. ``ms_crop_3x`` draws one of several scales
  per image; the fit then uses the middle one of ``data.ms_scales`` (mmdet's default: (1333, 640))
  and ignores the crop branch; :func:`training_scale` says so in its note.
* **anchors**: the model's own :class:`~swin_maskrcnn.modeling.anchors.AnchorGenerator` (the class
  ``RPNHead`` builds from ``model.rpn``), placed on every FPN level for the feature maps of each
  image's own padded size (its size rounded up to ``size_divisor``: the anchors the RPN may assign;
  ``AnchorGenerator.valid_flags`` marks exactly these positions in a padded batch).
* **IoU**: mmdet's ``MaxIoUAssigner`` formula (``torchvision.ops.box_iou``), every anchor counted
  (``allowed_border=-1``). ``bpr`` = fraction of boxes whose best anchor IoU is >= ``rpn.pos_iou_thr``;
  ``bpr_min_pos`` = fraction >= ``rpn.min_pos_iou``; ``unmatched`` = boxes whose best IoU is below
  ``rpn.min_pos_iou``: those get no positive anchor at all (not even a low-quality match).

The suggestion searches ``anchor_scales`` x ``anchor_ratios`` with as many scales and as many ratios
as the current ones (so the number of anchors per location, the RPN head's shape and every checkpoint
stay as they are) over a grid (scales 2^(k/4) from 0.5 to 32, ratios 1/4 .. 4, plus the current
values) and keeps the set with the highest ``bpr``; ties go to the set closest to the current one
(sum of |log| differences). The search uses a closed form: on a grid of same-shaped anchors the best
one for a box is the one whose centre is nearest to the box centre in x and in y (the overlap of two
intervals of fixed lengths only shrinks as their centres move apart), clamped to the map; its IoU is
computed with ``box_iou``'s arithmetic, so it is the maximum over every anchor of the map without
computing the others (whose IoU is no larger). ``fit_anchors(..., exact=True)`` computes the same
with ``box_iou`` against every anchor ``AnchorGenerator.grid_anchors`` places (images grouped by
padded size, chunked); the tests check both agree, and on dsb2018_nuclei they give the same bpr.

Public entry point: :func:`fit_anchors` (a dataset and a model config in, an :class:`AnchorFit` out);
:func:`collect_boxes` and :func:`best_anchor_ious` are its two halves.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_iou

from ..data.transforms import MMDET_MS_SCALES, Resize, resize_boxes
from ..modeling.anchors import AnchorGenerator, base_anchors
from ..modeling.config import ModelConfig, RPNConfig

log = logging.getLogger(__name__)

__all__ = [
    "SCALE_GRID",
    "RATIO_GRID",
    "SIZE_BINS",
    "FitBoxes",
    "AnchorStats",
    "AnchorFit",
    "training_scale",
    "collect_boxes",
    "anchor_generator",
    "best_anchor_ious",
    "nearest_anchor_table",
    "nearest_anchor_ious",
    "suggest_anchors",
    "fit_anchors",
]

Scale = tuple[int, int]

#: candidate anchor scales of the search: 2^(k/4) for k = -4..20 (0.5 .. 32), rounded to 3 decimals
SCALE_GRID: tuple[float, ...] = tuple(round(2.0 ** (k / 4.0), 3) for k in range(-4, 21))
#: candidate anchor ratios (h / w) of the search
RATIO_GRID: tuple[float, ...] = (0.25, 0.333, 0.5, 0.667, 1.0, 1.5, 2.0, 3.0, 4.0)
#: edges of the object-size bins (square root of the box area after the resize, px) of the per-size table
SIZE_BINS: tuple[float, ...] = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
#: IoU elements computed at once by the exact path (memory: a few times this many floats)
CHUNK_ELEMENTS = 1 << 22
#: above this many (scale set, ratio set) candidates the search is a coordinate ascent from the current set
MAX_EXHAUSTIVE = 50_000


# ------------------------------------------------------------------------------------------------
# boxes as training sees them
# ------------------------------------------------------------------------------------------------
def training_scale(data_cfg: Any) -> tuple[Optional[Scale], str]:
    """(the (long, short) resize scale the fit uses for a ``DataConfig``, a note saying which and why).

    ``1x``: ``data.scale``; ``ms_crop_3x``: the middle of ``data.ms_scales`` (by short side; mmdet's
    default list gives (1333, 640)), the crop branch not modelled; ``none``: no resize (None)."""
    kind = data_cfg.transforms
    if kind == "1x":
        scale = (int(data_cfg.scale[0]), int(data_cfg.scale[1]))
        return scale, f"data.scale {list(scale)} (1x pipeline: keep-ratio resize, flip not modelled)"
    if kind == "ms_crop_3x":
        choices = [tuple(int(v) for v in s) for s in (data_cfg.ms_scales or MMDET_MS_SCALES)]
        choices = sorted(choices, key=lambda s: (min(s), max(s)))
        scale = choices[len(choices) // 2]
        return scale, (f"{list(scale)}, the middle of the {len(choices)} multi-scale choices of ms_crop_3x "
                       f"({list(choices[0])} .. {list(choices[-1])}; the crop branch and the flip are not modelled)")
    if kind == "none":
        return None, "no resize (data.transforms=none): boxes at the images' own size"
    raise ValueError(f"unknown data.transforms {kind!r}")


@dataclass
class FitBoxes:
    """Every box of a data set after the training resize, with what the anchor fit needs."""

    boxes: Tensor  # (M, 4) float32 xyxy in the resized image
    pad_shapes: Tensor  # (M, 2) int64: (h, w) of the box's image after the resize, rounded up to size_divisor
    labels: Tensor  # (M,) int64 contiguous labels
    image_ids: Tensor  # (M,) int64 the json's image id of each box
    num_images: int  # images looked at (with or without boxes)
    scale: Optional[Scale]
    scale_note: str = ""

    @property
    def sizes(self) -> Tensor:
        """(M,) square root of each resized box's area (the object size of the size bins and plots)."""
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        return (wh[:, 0] * wh[:, 1]).sqrt()


def collect_boxes(
    dataset: Any,
    scale: Optional[Scale],
    size_divisor: int = 32,
    indices: Optional[Sequence[int]] = None,
    scale_note: str = "",
    progress: bool = False,
) -> FitBoxes:
    """The training boxes of ``dataset`` (a :class:`~swin_maskrcnn.data.coco.CocoInstanceDataset`),
    resized to ``scale`` (long, short; None = own size) as the training pipeline resizes them.

    No image is read and no mask decoded: sizes come from the json (checked against the files by the
    dataset's start-up scan), boxes from :meth:`CocoInstanceDataset.instance_boxes`. ``indices``
    restricts to some dataset indices (default: all)."""
    idx = range(len(dataset)) if indices is None else list(indices)
    resize = None if scale is None else Resize(scale, keep_ratio=True)
    boxes, pads, labels, ids = [], [], [], []
    it: Any = idx
    if progress and len(idx) > 200:
        from tqdm.auto import tqdm

        it = tqdm(idx, desc="boxes", unit="img", leave=False)
    for i in it:
        img_id = int(dataset.img_ids[i])
        info = dataset.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        b, lab = dataset.instance_boxes(i)
        nh, nw = (h, w) if resize is None else resize.output_size(h, w)
        if b.shape[0] == 0:
            continue
        if (nh, nw) != (h, w):
            bb = tv_tensors.BoundingBoxes(b, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w))
            b = resize_boxes(bb, nh, nw).as_subclass(Tensor).to(torch.float32)
        ph = int(math.ceil(nh / size_divisor)) * size_divisor
        pw = int(math.ceil(nw / size_divisor)) * size_divisor
        boxes.append(b)
        labels.append(lab)
        pads.append(torch.tensor([[ph, pw]], dtype=torch.int64).expand(b.shape[0], 2))
        ids.append(torch.full((b.shape[0],), img_id, dtype=torch.int64))
    if not boxes:
        z = torch.zeros((0,), dtype=torch.int64)
        return FitBoxes(torch.zeros((0, 4)), torch.zeros((0, 2), dtype=torch.int64), z, z.clone(), len(idx), scale,
                        scale_note)
    return FitBoxes(torch.cat(boxes), torch.cat(pads), torch.cat(labels), torch.cat(ids), len(idx), scale, scale_note)


# ------------------------------------------------------------------------------------------------
# best anchor of every box
# ------------------------------------------------------------------------------------------------
def anchor_generator(rpn: RPNConfig, scales: Optional[Sequence[float]] = None,
                     ratios: Optional[Sequence[float]] = None) -> AnchorGenerator:
    """The anchor generator ``RPNHead`` builds from ``rpn`` (optionally with other scales / ratios)."""
    return AnchorGenerator(rpn.anchor_strides, list(rpn.anchor_scales if scales is None else scales),
                           list(rpn.anchor_ratios if ratios is None else ratios))


def _map_sizes(generator: AnchorGenerator, pad_h: int, pad_w: int) -> list[tuple[int, int]]:
    """Feature-map sizes of one image of padded size (pad_h, pad_w) on every level: ceil(pad / stride)
    (the backbone's P2..P5 and P6 = max-pool(P5, 1, 2); ``valid_flags``' rule)."""
    return [(int(math.ceil(pad_h / s)), int(math.ceil(pad_w / s))) for s in generator.strides]


def best_anchor_ious(fb: FitBoxes, generator: AnchorGenerator, progress: bool = False) -> tuple[Tensor, Tensor]:
    """(best IoU (M,), FPN level index of that anchor (M,)) of every box against every anchor the
    generator places for its image's padded size (``box_iou``, all levels, every anchor; ties go to
    the first anchor in the RPN's order, i.e. the lowest level). Images of equal padded size share one
    anchor set; the IoU matrix is computed in chunks of about :data:`CHUNK_ELEMENTS` elements."""
    m = fb.boxes.shape[0]
    best = torch.zeros(m, dtype=torch.float32)
    level = torch.zeros(m, dtype=torch.int64)
    if m == 0:
        return best, level
    uniq, inverse = torch.unique(fb.pad_shapes, dim=0, return_inverse=True)
    groups: Any = range(uniq.shape[0])
    if progress and m > 2000:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="anchor IoU", unit="size", leave=False)
    for g in groups:
        ph, pw = (int(v) for v in uniq[g])
        sel = (inverse == g).nonzero().flatten()
        per_level = generator.grid_anchors(_map_sizes(generator, ph, pw), torch.device("cpu"))
        anchors = torch.cat(per_level)
        ends = torch.tensor([a.shape[0] for a in per_level]).cumsum(0)
        rows = max(1, CHUNK_ELEMENTS // max(1, anchors.shape[0]))
        for start in range(0, sel.numel(), rows):
            part = sel[start:start + rows]
            v, a = box_iou(fb.boxes[part], anchors).max(dim=1)
            best[part] = v
            level[part] = torch.searchsorted(ends, a, right=True)
    return best, level


def _elementwise_iou(b: Tensor, a: Tensor) -> Tensor:
    """IoU of b (M, 1, 4) with a (M, K, 4), pairwise along M, with box_iou's float32 arithmetic."""
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    lt = torch.maximum(b[..., :2], a[..., :2])
    rb = torch.minimum(b[..., 2:], a[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_b + area_a - inter)


def nearest_anchor_table(fb: FitBoxes, strides: Sequence[int], scales: Sequence[float],
                         ratios: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Closed-form best IoU of every box for every single (ratio, scale) anchor shape.

    Returns (table (M, R, S): the best IoU over all levels of the anchors of shape (ratio r, scale s),
    level (M, R, S): the level it is on). On one level all anchors of one shape form a grid with
    centres (x * stride, y * stride); the best one is nearest to the box centre in x and in y,
    clamped to the map (see the module docstring). Base anchors come from the model's
    :func:`~swin_maskrcnn.modeling.anchors.base_anchors`."""
    m, r, s = fb.boxes.shape[0], len(ratios), len(scales)
    table = torch.zeros((m, r, s), dtype=torch.float32)
    lev = torch.zeros((m, r, s), dtype=torch.int64)
    if m == 0:
        return table, lev
    b = fb.boxes
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    for li, stride in enumerate(strides):
        base = base_anchors(stride, scales, ratios)  # (R * S, 4) ratio-major
        map_h = torch.ceil(fb.pad_shapes[:, 0].double() / stride).to(torch.int64)
        map_w = torch.ceil(fb.pad_shapes[:, 1].double() / stride).to(torch.int64)
        gx = torch.minimum(torch.round(cx / stride).clamp(min=0).to(torch.int64), map_w - 1).float() * stride
        gy = torch.minimum(torch.round(cy / stride).clamp(min=0).to(torch.int64), map_h - 1).float() * stride
        shifts = torch.stack([gx, gy, gx, gy], dim=1)  # (M, 4)
        iou = _elementwise_iou(b[:, None, :], shifts[:, None, :] + base[None]).reshape(m, r, s)
        better = iou > table
        table = torch.where(better, iou, table)
        lev = torch.where(better, torch.full_like(lev, li), lev)
    return table, lev


def nearest_anchor_ious(fb: FitBoxes, strides: Sequence[int], scales: Sequence[float],
                        ratios: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(best IoU (M,), its FPN level (M,)) over all anchors of ``scales`` x ``ratios``: the closed form
    of :func:`best_anchor_ious` (the max over the anchor shapes of :func:`nearest_anchor_table`)."""
    table, lev = nearest_anchor_table(fb, strides, scales, ratios)
    if table.shape[0] == 0:
        return table.new_zeros(0), lev.new_zeros(0)
    flat, flat_lev = table.flatten(1), lev.flatten(1)
    best = flat.max(dim=1).values
    # ties (e.g. scale 6 on P2 and scale 3 on P3 are the same anchor where P3's grid meets P2's) go to
    # the lowest level, the first in the RPN's anchor order, as in best_anchor_ious
    level = torch.where(flat == best[:, None], flat_lev, torch.full_like(flat_lev, len(strides))).min(dim=1).values
    return best, level


# ------------------------------------------------------------------------------------------------
# statistics and search
# ------------------------------------------------------------------------------------------------
@dataclass
class AnchorStats:
    """Fit of one anchor set: the report's numbers and the per-box best IoU behind them."""

    anchor_scales: list[float]
    anchor_ratios: list[float]
    bpr: float
    bpr_min_pos: float
    unmatched: int
    best_iou: Tensor = field(repr=False)  # (M,)
    best_level: Tensor = field(repr=False)  # (M,)

    def as_dict(self) -> dict[str, Any]:
        return {"anchor_scales": [float(v) for v in self.anchor_scales],
                "anchor_ratios": [float(v) for v in self.anchor_ratios],
                "bpr": float(self.bpr), "bpr_min_pos": float(self.bpr_min_pos), "unmatched": int(self.unmatched)}


def _stats(scales: Sequence[float], ratios: Sequence[float], best: Tensor, level: Tensor,
           pos_thr: float, min_pos: float) -> AnchorStats:
    m = best.numel()
    bpr = float((best >= pos_thr).sum()) / m if m else 0.0
    bpr_min = float((best >= min_pos).sum()) / m if m else 0.0
    return AnchorStats([float(v) for v in scales], [float(v) for v in ratios], bpr, bpr_min,
                       int((best < min_pos).sum()), best, level)


def _distance(scales: Sequence[float], ratios: Sequence[float], cur_s: Sequence[float], cur_r: Sequence[float]) -> float:
    """Sum of |log| differences of the sorted values: how far a candidate is from the current set."""
    d = sum(abs(math.log(a) - math.log(b)) for a, b in zip(sorted(scales), sorted(cur_s)))
    return d + sum(abs(math.log(a) - math.log(b)) for a, b in zip(sorted(ratios), sorted(cur_r)))


def suggest_anchors(
    fb: FitBoxes,
    rpn: RPNConfig,
    scale_grid: Sequence[float] = SCALE_GRID,
    ratio_grid: Sequence[float] = RATIO_GRID,
) -> tuple[list[float], list[float], int]:
    """(scales, ratios, boxes reaching ``rpn.pos_iou_thr``) of the best set with as many scales and
    ratios as ``rpn``'s: highest count first, then closest to the current set, then smallest values.
    Exhaustive over the grid (plus the current values) when that is at most :data:`MAX_EXHAUSTIVE`
    candidates, else a coordinate ascent from the current set."""
    cur_s, cur_r = [float(v) for v in rpn.anchor_scales], [float(v) for v in rpn.anchor_ratios]
    grid_s = sorted(set(float(v) for v in scale_grid) | set(cur_s))
    grid_r = sorted(set(float(v) for v in ratio_grid) | set(cur_r))
    table, _ = nearest_anchor_table(fb, rpn.anchor_strides, grid_s, grid_r)
    hit = table >= rpn.pos_iou_thr  # (M, R, S)
    ns, nr = len(cur_s), len(cur_r)
    si = {v: i for i, v in enumerate(grid_s)}
    ri = {v: i for i, v in enumerate(grid_r)}

    def count(rs: Sequence[int], ss: Sequence[int]) -> int:
        return int(hit[:, list(rs)][:, :, list(ss)].flatten(1).any(dim=1).sum())

    def key(c: int, rs: Sequence[int], ss: Sequence[int]) -> tuple:
        s_vals, r_vals = [grid_s[i] for i in ss], [grid_r[i] for i in rs]
        return (-c, round(_distance(s_vals, r_vals, cur_s, cur_r), 9), sorted(s_vals), sorted(r_vals))

    n_cand = math.comb(len(grid_s), ns) * math.comb(len(grid_r), nr)
    best: Optional[tuple] = None
    if n_cand <= MAX_EXHAUSTIVE:
        for rs in itertools.combinations(range(len(grid_r)), nr):
            per_ratio = hit[:, list(rs)].any(dim=1)  # (M, S)
            if ns == 1:
                counts = per_ratio.sum(dim=0).tolist()
                cands = [((int(c), rs, (j,))) for j, c in enumerate(counts)]
            else:
                cands = [(int(per_ratio[:, list(ss)].any(dim=1).sum()), rs, ss)
                         for ss in itertools.combinations(range(len(grid_s)), ns)]
            for c, r_, s_ in cands:
                k = key(c, r_, s_)
                if best is None or k < best[0]:
                    best = (k, r_, s_)
    else:  # coordinate ascent: replace one value at a time while the key improves
        rs, ss = [ri[v] for v in cur_r], [si[v] for v in cur_s]
        current = key(count(rs, ss), rs, ss)
        improved = True
        while improved:
            improved = False
            for which, values, grid in (("r", rs, grid_r), ("s", ss, grid_s)):
                for pos in range(len(values)):
                    for j in range(len(grid)):
                        if j in values:
                            continue
                        trial = list(values)
                        trial[pos] = j
                        t_rs, t_ss = (trial, ss) if which == "r" else (rs, trial)
                        k = key(count(t_rs, t_ss), t_rs, t_ss)
                        if k < current:
                            current, improved = k, True
                            values[pos] = j
        best = (current, tuple(rs), tuple(ss))
    assert best is not None
    (neg_count, _, s_vals, r_vals), _, _ = best
    return list(s_vals), list(r_vals), -neg_count


@dataclass
class AnchorFit:
    """Result of :func:`fit_anchors`; :meth:`as_dict` is ``report.json``'s ``anchor_fit``."""

    pos_iou_thr: float
    min_pos_iou: float
    strides: list[int]
    boxes: FitBoxes = field(repr=False)
    current: AnchorStats
    suggested: AnchorStats
    seconds: float = 0.0

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.boxes.shape[0])

    @property
    def changed(self) -> bool:
        """Whether the suggestion differs from the current anchors."""
        return (sorted(self.suggested.anchor_scales) != sorted(self.current.anchor_scales)
                or sorted(self.suggested.anchor_ratios) != sorted(self.current.anchor_ratios))

    def override_line(self) -> str:
        """The ``key=value`` overrides that set the suggested anchors (to paste after a command)."""
        def fmt(vals: Sequence[float]) -> str:
            return "[" + ",".join(f"{v:g}" for v in vals) + "]"

        return (f"model.rpn.anchor_scales={fmt(self.suggested.anchor_scales)} "
                f"model.rpn.anchor_ratios={fmt(self.suggested.anchor_ratios)}")

    def per_level(self, which: str = "current") -> list[dict[str, Any]]:
        """Per FPN level: stride, anchor sizes (stride x scale), boxes whose best anchor is on it, their bpr."""
        st = getattr(self, which)
        out = []
        for li, stride in enumerate(self.strides):
            on = st.best_level == li
            n = int(on.sum())
            out.append({"level": f"P{li + 2}", "stride": int(stride),
                        "anchor_sizes": [float(stride * s) for s in st.anchor_scales], "boxes": n,
                        "bpr": float((st.best_iou[on] >= self.pos_iou_thr).sum()) / n if n else None})
        return out

    def per_size(self, which: str = "current") -> list[dict[str, Any]]:
        """Per object-size bin (:data:`SIZE_BINS`, sqrt of the resized box area): boxes, bpr, bpr_min_pos."""
        st = getattr(self, which)
        sizes = self.boxes.sizes
        out = []
        for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
            on = (sizes >= lo) & (sizes < hi)
            n = int(on.sum())
            if n == 0:
                continue
            out.append({"size": f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}", "boxes": n,
                        "bpr": float((st.best_iou[on] >= self.pos_iou_thr).sum()) / n,
                        "bpr_min_pos": float((st.best_iou[on] >= self.min_pos_iou).sum()) / n,
                        "unmatched": int((st.best_iou[on] < self.min_pos_iou).sum())})
        return out

    def as_dict(self) -> dict[str, Any]:
        """``report.json``'s ``anchor_fit`` (the contract's keys first, then the details)."""
        return {
            "pos_iou_thr": float(self.pos_iou_thr),
            "min_pos_iou": float(self.min_pos_iou),
            "current": self.current.as_dict(),
            "suggested": self.suggested.as_dict(),
            "scale": None if self.boxes.scale is None else list(self.boxes.scale),
            "scale_note": self.boxes.scale_note,
            "num_boxes": self.num_boxes,
            "num_images": int(self.boxes.num_images),
            "strides": [int(s) for s in self.strides],
            "per_level": {"current": self.per_level("current"), "suggested": self.per_level("suggested")},
            "per_size": {"current": self.per_size("current"), "suggested": self.per_size("suggested")},
            "override": self.override_line(),
            "seconds": round(float(self.seconds), 3),
        }


def fit_anchors(
    dataset: Any,
    model_cfg: ModelConfig,
    scale: Optional[Scale] = None,
    *,
    data_cfg: Any = None,
    indices: Optional[Sequence[int]] = None,
    search: bool = True,
    exact: bool = False,
    progress: bool = False,
) -> AnchorFit:
    """Fit of ``model_cfg.rpn``'s anchors to ``dataset``'s training boxes, and the best alternative.

    ``dataset``: a :class:`~swin_maskrcnn.data.coco.CocoInstanceDataset` (its transforms are not used;
    boxes come from the json, no image is decoded). The resize: ``data_cfg`` (a ``DataConfig``, via
    :func:`training_scale`) when given, else ``scale`` (long, short), else ``model_cfg.test_scale``.
    ``indices``: only these dataset indices. ``search=False`` skips the suggestion (it is then the
    current set). The best IoU of every box comes from the closed form (:func:`nearest_anchor_ious`,
    milliseconds); ``exact=True`` computes it with ``box_iou`` against every anchor the generator
    places instead (:func:`best_anchor_ious`, the reference; ~10 s per anchor set on nuclei at one
    thread). Both give the same numbers (tests/diagnostics/test_anchor_fit.py, and on the whole of
    dsb2018_nuclei, docs/data.md). Returns an :class:`AnchorFit`: ``current`` / ``suggested`` with ``bpr``,
    ``bpr_min_pos``, ``unmatched`` (thresholds ``rpn.pos_iou_thr`` / ``rpn.min_pos_iou``), per level and
    per size tables, and :meth:`AnchorFit.override_line`. Takes seconds on dsb2018_nuclei (531 images,
    29k boxes)::

        fit = fit_anchors(train_ds, cfg.model, data_cfg=cfg.data)
        fit.current.bpr, fit.suggested.bpr, fit.override_line()
    """
    t0 = time.perf_counter()
    if data_cfg is not None:
        scale, note = training_scale(data_cfg)
    elif scale is not None:
        scale = (int(scale[0]), int(scale[1]))
        note = f"{list(scale)} (keep-ratio resize)"
    else:
        scale = None if model_cfg.test_scale is None else tuple(model_cfg.test_scale)  # type: ignore[assignment]
        note = f"model.test_scale {list(scale) if scale else None} (no data config given)"
    rpn = model_cfg.rpn
    fb = collect_boxes(dataset, scale, model_cfg.size_divisor, indices, note, progress)

    def measure(scales: Sequence[float], ratios: Sequence[float]) -> AnchorStats:
        if exact:
            best, level = best_anchor_ious(fb, anchor_generator(rpn, scales, ratios), progress)
        else:
            best, level = nearest_anchor_ious(fb, rpn.anchor_strides, scales, ratios)
        return _stats(scales, ratios, best, level, rpn.pos_iou_thr, rpn.min_pos_iou)

    current = measure(rpn.anchor_scales, rpn.anchor_ratios)
    suggested = current
    if search and fb.boxes.shape[0]:
        s_vals, r_vals, _ = suggest_anchors(fb, rpn)
        if sorted(s_vals) != sorted(current.anchor_scales) or sorted(r_vals) != sorted(current.anchor_ratios):
            suggested = measure(s_vals, r_vals)
    fit = AnchorFit(rpn.pos_iou_thr, rpn.min_pos_iou, list(rpn.anchor_strides), fb, current, suggested,
                    time.perf_counter() - t0)
    log.debug("anchor fit of %d boxes in %.2f s", fit.num_boxes, fit.seconds)
    return fit
