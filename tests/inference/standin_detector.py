"""A stand-in detector for sliced prediction: it returns, for each tile, the ground-truth instances
visible in it (cut at the tile border), read from an image that encodes them in its pixels
(R = id % 256, G = id // 256, B = label + 1; B = 0 is background). Its mask probabilities are the
visible mask resampled (nearest) to M x M with M at least twice the visible box, so the model's
paste (``grid_sample`` over the box, threshold 0.5) gives the visible mask back exactly."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def paint_canvas(h: int, w: int, objects: list[tuple[np.ndarray, int, int, int]]) -> tuple[np.ndarray, list[dict]]:
    """(H, W, 3) uint8 canvas with each object ``(mask (h, w) bool, x, y, label)`` painted at (x, y);
    returns the canvas and the ground truth: per object ``mask`` (H, W) bool window-free, ``label``,
    ``box`` (tight, xyxy) and ``id`` (1-based)."""
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    gt = []
    for i, (m, x, y, label) in enumerate(objects, start=1):
        ys, xs = np.nonzero(m)
        canvas[y + ys, x + xs] = (i % 256, i // 256, label + 1)
        gt.append({"id": i, "label": label, "x": x, "y": y, "mask": m,
                   "box": [x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1]})
    return canvas, gt


class StandIn(torch.nn.Module):
    """``detect_raw`` as the real model's, from the pixel encoding of :func:`paint_canvas`."""

    def __init__(self, m: int = 128, score_of_cut: Optional[float] = None, dilate: int = 0) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(roi=SimpleNamespace(mask_thr=0.5), test_scale=None)
        self.m = m
        self.score_of_cut = score_of_cut
        self.dilate = dilate  # grow each mask by this many px (predicted masks that bleed into neighbours)
        self.calls: list[tuple[int, int]] = []

    def detect_raw(self, images):
        out = []
        for im in images:
            self.calls.append((int(im.shape[1]), int(im.shape[2])))
            a = im.round().to(torch.int64).cpu().numpy()
            ids = a[0] + 256 * a[1]
            labels = a[2] - 1
            boxes, scores, labs, probs = [], [], [], []
            for i in np.unique(ids[labels >= 0]):
                vis = (ids == i) & (labels >= 0)
                label = int(labels[vis][0])
                if self.dilate:
                    k = 2 * self.dilate + 1
                    vis = F.max_pool2d(torch.from_numpy(vis.astype(np.float32))[None, None], k, 1, self.dilate)[0, 0].numpy() > 0
                ys, xs = np.nonzero(vis)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                if max(x1 - x0, y1 - y0) * 2 > self.m:
                    raise AssertionError("stand-in objects must be at most M / 2 px")
                crop = torch.from_numpy(vis[y0:y1, x0:x1].astype(np.float32))[None, None]
                probs.append(F.interpolate(crop, size=(self.m, self.m), mode="nearest-exact")[0, 0])
                boxes.append([x0, y0, x1, y1])
                labs.append(label)
                # visible fraction is unknown to a detector; a cut part can be given a different score
                touches = x0 == 0 or y0 == 0 or x1 == im.shape[2] or y1 == im.shape[1]
                scores.append(self.score_of_cut if (touches and self.score_of_cut is not None) else 0.9)
            k = len(boxes)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(k, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labs, dtype=torch.int64),
                        "mask_probs": torch.stack(probs) if k else torch.zeros(0, self.m, self.m)})
        return out


def disc(d: int) -> np.ndarray:
    r = (d - 1) / 2
    yy, xx = np.mgrid[:d, :d]
    return (yy - r) ** 2 + (xx - r) ** 2 <= (d / 2) ** 2


def random_objects(h: int, w: int, n: int, sizes: tuple[int, int], seed: int, num_labels: int = 1,
                   gap: int = 1) -> list[tuple[np.ndarray, int, int, int]]:
    """Up to ``n`` non-overlapping discs and ellipses placed at random (at least ``gap`` px apart)."""
    rng = np.random.default_rng(seed)
    taken = np.zeros((h, w), dtype=bool)
    objs = []
    for _ in range(n * 4):
        if len(objs) == n:
            break
        dh, dw = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        m = disc(max(dh, dw))
        m = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(dh, dw),
                          mode="nearest-exact")[0, 0].numpy() > 0.5
        y, x = int(rng.integers(0, h - dh + 1)), int(rng.integers(0, w - dw + 1))
        y0, x0 = max(0, y - gap), max(0, x - gap)
        if taken[y0 : y + dh + gap, x0 : x + dw + gap].any():
            continue
        taken[y : y + dh, x : x + dw] |= m
        objs.append((m, x, y, int(rng.integers(0, num_labels))))
    return objs

