"""Labels in dense scenes: none covers another, and one with no free place near its box is left out."""
from __future__ import annotations

import torch

from swin_maskrcnn.apps.visualize import draw_labels


def _colours(n: int) -> list[tuple[int, int, int]]:
    return [(10 + 4 * i, 250 - 4 * i, 128) for i in range(n)]  # distinct, none black or white


def test_labels_of_stacked_boxes_stop_after_max_shift_rows():
    image = torch.zeros(3, 300, 300, dtype=torch.uint8)
    boxes = torch.tensor([[50.0, 100.0, 60.0, 110.0]] * 40)
    cols = _colours(40)
    out = draw_labels(image, boxes, ["x"] * 40, cols, max_shift=2)
    seen = {tuple(int(v) for v in out[:, y, x]) for y in range(300) for x in range(0, 120)}
    drawn = [c for c in cols if c in seen]
    assert drawn == cols[:3]  # the label's own row and two below it; the first (best-scoring) texts win


def test_labels_of_separate_boxes_are_all_drawn():
    image = torch.zeros(3, 300, 300, dtype=torch.uint8)
    boxes = torch.tensor([[20.0 + 60 * i, 150.0, 40.0 + 60 * i, 170.0] for i in range(4)])
    cols = _colours(4)
    out = draw_labels(image, boxes, ["ab"] * 4, cols)
    seen = {tuple(int(v) for v in out[:, y, x]) for y in range(300) for x in range(300)}
    assert all(c in seen for c in cols)
