"""inspect's crowd / ignore region report on a hand-counted tiny COCO file: counts per class, degenerate
ones (the dataset's rule), the image area they cover, and what training does under data.crowd."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_box_coco
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.diagnostics.data_report import union_area

CATS = [(1, "a"), (2, "b")]
SIZES = [(100, 100), (100, 100), (100, 100), (200, 100)]  # (w, h)
FIX_DROP = "data.crowd=ignore model.rpn.ignore_iof_thr=0.5 model.roi.ignore_iof_thr=0.5"


def tiny(tmp_path):
    """One instance per image; six crowd-like annotations (ids 5-10):
    image 1: two overlapping crowds of a, [10,10,40,50] and [30,30,40,40]: union 2000 + 1600 - 20*30 = 3000 px (0.30);
    image 2: an "ignore": 1 (iscrowd 0) region of b over the whole image (1.0);
    image 3: a crowd of a 0.5 px wide and one of b outside the image: both degenerate (0.0);
    image 4 (200 x 100): a crowd of b [190,90,20,20] clipped to 10 x 10 = 100 px (0.005)."""
    boxes = [(k, 1 + k % 2, [60, 60, 20, 20]) for k in range(4)]
    boxes += [(0, 1, [10, 10, 40, 50], 1), (0, 1, [30, 30, 40, 40], 1), (1, 2, [0, 0, 100, 100], 1),
              (2, 1, [0.5, 0.5, 0.5, 20], 1), (2, 2, [120, 10, 10, 10], 1), (3, 2, [190, 90, 20, 20], 1)]
    ann, imgs = write_box_coco(tmp_path / "tiny", SIZES, boxes, CATS)
    data = json.loads(ann.read_text())
    flagged = next(a for a in data["annotations"] if a["id"] == 7)
    flagged["iscrowd"], flagged["ignore"] = 0, 1
    ann.write_text(json.dumps(data))
    return ann, imgs


def run(tmp_path, capsys, *overrides):
    ann, imgs = tiny(tmp_path)
    out = tmp_path / "out"
    code = main(["inspect", "--ann", str(ann), "--images", str(imgs), "data.scale=[128,128]", *overrides,
                 "--out", str(out), "--no-progress", "--no-plots"])
    assert code == 0
    printed = capsys.readouterr().out
    return json.loads((out / "report.json").read_text()), printed


def test_counts_degenerate_and_area_hand_counted(tmp_path, capsys):
    r, text = run(tmp_path, capsys)
    cr = r["crowd_regions"]
    assert r["crowd"] == 6
    assert (cr["annotations"], cr["iscrowd"], cr["ignore_flag"], cr["images"]) == (6, 5, 1, 4)
    assert cr["per_class"] == {"a": 3, "b": 3}
    assert (cr["degenerate"], cr["malformed"], cr["usable"]) == (2, 0, 4)
    fr = cr["image_area_fraction"]
    assert fr["mean"] == pytest.approx((0.30 + 1.0 + 0.0 + 0.005) / 4)
    assert fr["max"] == pytest.approx(1.0)
    assert fr["overall"] == pytest.approx((3000 + 10000 + 100) / (3 * 100 * 100 + 200 * 100))
    assert cr["data_crowd"] == "drop" and cr["rpn_ignore_iof_thr"] == -1 and cr["roi_ignore_iof_thr"] == -1
    assert [c["instances"] for c in r["classes"]] == [2, 2]  # crowds are not instances
    p = {q["kind"]: q for q in r["problems"]}["crowd annotations"]
    assert p["count"] == 6 and p["severity"] == "warning" and p["fix"] == FIX_DROP
    assert "taught as background" in p["message"] and "2 under 1 px or outside the image" in p["message"]
    assert "per class: a 3, b 3" in text and "taught as background" in text


def test_usable_equals_the_datasets_ignore_boxes(tmp_path):
    """The report's rule is the dataset's: with data.crowd=ignore the targets carry exactly the usable ones."""
    ann, imgs = tiny(tmp_path)
    ds = CocoInstanceDataset(ann, imgs, crowd="ignore")
    assert ds.num_ignore_boxes() == 4
    assert ds.report.problems["crowd box under 1 px or outside the image"] == 2
    got = [b for i in range(len(ds)) for b in ds.get_raw_target(i)["ignore_boxes"].tolist()]
    assert sum(union_area([b]) for b in got) == pytest.approx(2000 + 1600 + 10000 + 100)


def test_ignore_mode_with_and_without_thresholds(tmp_path, capsys):
    r, _ = run(tmp_path, capsys, "data.crowd=ignore")
    p = {q["kind"]: q for q in r["problems"]}["crowd annotations"]
    assert p["severity"] == "warning" and p["fix"] == "model.rpn.ignore_iof_thr=0.5 model.roi.ignore_iof_thr=0.5"
    assert "both ignore_iof_thr are off" in r["crowd_regions"]["training"]
    r, text = run(tmp_path / "on", capsys, "data.crowd=ignore", "model.rpn.ignore_iof_thr=0.5",
                  "model.roi.ignore_iof_thr=0.5")
    p = {q["kind"]: q for q in r["problems"]}["crowd annotations"]
    assert p["severity"] == "info" and "ignore_boxes" in r["crowd_regions"]["training"]
    assert r["crowd_regions"]["rpn_ignore_iof_thr"] == 0.5 and "ignore_boxes" in text


def test_malformed_crowd_bbox_counted_not_fatal_under_drop(tmp_path, capsys):
    ann, imgs = tiny(tmp_path)
    data = json.loads(ann.read_text())
    next(a for a in data["annotations"] if a["id"] == 5)["bbox"] = [1, 2, "x"]
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["inspect", "--ann", str(ann), "--images", str(imgs), "--out", str(out), "--no-progress",
                 "--no-plots"]) == 0
    cr = json.loads((out / "report.json").read_text())["crowd_regions"]
    assert (cr["malformed"], cr["degenerate"], cr["usable"]) == (1, 2, 3)


def test_union_area_against_a_raster():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.integers(0, 40, size=(5, 2))
        wh = rng.integers(1, 25, size=(5, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        grid = np.zeros((80, 80), bool)
        for x1, y1, x2, y2 in boxes:
            grid[y1:y2, x1:x2] = True
        assert union_area(boxes.tolist()) == pytest.approx(grid.sum())
    assert union_area([]) == 0.0
