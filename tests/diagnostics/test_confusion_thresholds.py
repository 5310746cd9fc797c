"""Confusion matrix cells and per-class thresholds on the planted files, computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from swin_maskrcnn.diagnostics.confusion import confusion_matrix
from swin_maskrcnn.diagnostics.inputs import load_ground_truth, load_results
from swin_maskrcnn.diagnostics.thresholds import best_threshold, choose_thresholds, class_curves

from .planted import perfect_results, write


def _load(tmp_path, n):
    gt_path, res_path = write(tmp_path, n)
    coco = load_ground_truth(gt_path)
    return coco, load_results(res_path, coco)


def test_confusion_three_classes(tmp_path):
    coco, res = _load(tmp_path, 3)
    c = confusion_matrix(coco, res, iou=0.5, score_thr=0.0)
    assert c["labels"] == ["A", "B", "C", "background"]
    # rows: GT A, B, C, background (unmatched detections); columns: predicted A, B, C, background (missed GT)
    # A: d1->g1, d9->g5, e1->g8; g3 unmatched (d4 IoU 1/3). B: d3 (A) on g2, d10->g7. C: d7->g4, g6 unmatched.
    # background: d2 (g1 taken), d4 (IoU 1/3) as A; d5 (IoU 1/3 with the taken g4) as B; d6 as C.
    assert c["matrix"] == [[3, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [2, 1, 1, 0]]
    c = confusion_matrix(coco, res, iou=0.5, score_thr=0.5)  # drops d9 (.3) and d10 (.2): g5, g7 missed
    assert c["matrix"] == [[2, 0, 0, 2], [1, 0, 0, 1], [0, 0, 1, 1], [2, 1, 1, 0]]
    assert (c["iou"], c["score_thr"]) == (0.5, 0.5)
    # at IoU 0.3 d4 (1/3 with g3) matches g3, and d5 (1/3 with g4) finds g4 taken by d7
    assert confusion_matrix(coco, res, iou=0.3, score_thr=0.0)["matrix"][0] == [4, 0, 0, 0]


def test_confusion_one_and_two_classes(tmp_path):
    coco, res = _load(tmp_path, 1)
    c = confusion_matrix(coco, res, iou=0.5, score_thr=0.0)
    assert c["labels"] == ["A", "background"]
    # matched: d7, d1, d9, e1; missed g3, g6; background detections d6, d2, d4
    assert c["matrix"] == [[4, 2], [3, 0]]
    # two classes: the 3-class files with C's ground truth and detections removed
    coco3, res3 = _load(tmp_path, 3)
    gt = dict(coco3.dataset)
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 3]
    gt["categories"] = [c for c in gt["categories"] if c["id"] != 3]
    from pycocotools.coco import COCO

    coco2 = COCO()
    coco2.dataset = gt
    coco2.createIndex()
    res2 = load_results([{k: v for k, v in r.items() if k != "_index"} for r in res3 if r["category_id"] != 3], coco2)
    c = confusion_matrix(coco2, res2, iou=0.5, score_thr=0.0)
    assert c["labels"] == ["A", "B", "background"]
    # d5 (B) now overlaps no ground truth (g4 gone): background; d3 on g2 is the one A-for-B confusion
    assert c["matrix"] == [[3, 0, 1], [1, 1, 0], [2, 1, 0]]


def test_thresholds_by_hand(tmp_path):
    coco, res = _load(tmp_path, 3)
    chosen, curves = choose_thresholds(coco, res, beta=1.0)
    # A (4 GT): .99T .9T .8F .7F .6F .3T ; F at each: .4, 2/3, 4/7, .5, 4/9, .6 -> t = .9 (P 1, R .5)
    assert chosen["A"] == pytest.approx({"score": 0.9, "precision": 1.0, "recall": 0.5, "f": 2 / 3})
    np.testing.assert_allclose(curves["A"]["f"], [0.4, 2 / 3, 4 / 7, 0.5, 4 / 9, 0.6])
    # B (2 GT): .5F .2T -> F 0, .5 ; C (2 GT): .97F .95T -> F 0, .5
    assert chosen["B"] == pytest.approx({"score": 0.2, "precision": 0.5, "recall": 0.5, "f": 0.5})
    assert chosen["C"] == pytest.approx({"score": 0.95, "precision": 0.5, "recall": 0.5, "f": 0.5})
    # beta 2 on A: F2 = 5PR / (4P + R): .9 -> 5/9, .3 -> 1.875 / 2.75 = 15/22 -> t = .3
    chosen2, _ = choose_thresholds(coco, res, beta=2.0)
    assert chosen2["A"] == pytest.approx({"score": 0.3, "precision": 0.5, "recall": 0.75, "f": 15 / 22})


def test_thresholds_one_class_and_ties(tmp_path):
    coco, res = _load(tmp_path, 1)
    chosen, _ = choose_thresholds(coco, res)
    # 6 GT: .99T .97F .95T .9T .8F .6F .3T -> best F at .3: P 4/7, R 4/6, F 16/26
    assert chosen["A"] == pytest.approx({"score": 0.3, "precision": 4 / 7, "recall": 2 / 3, "f": 16 / 26})
    # a tie: .9T .8F .7F .6T with 2 GT -> F(.9) = 2/3 = F(.6): the higher threshold wins
    c = class_curves([(0.9, True, 0), (0.8, False, 1), (0.7, False, 2), (0.6, True, 3)], num_gt=2)
    assert best_threshold(c) == pytest.approx({"score": 0.9, "precision": 1.0, "recall": 0.5, "f": 2 / 3})
    # equal scores count together: both detections at .5 are kept or dropped at once
    c = class_curves([(0.5, True, 0), (0.5, False, 1)], num_gt=1)
    assert c["score"].tolist() == [0.5] and c["precision"].tolist() == [0.5]


def test_perfect_predictions_thresholds(tmp_path):
    gt_path, _ = write(tmp_path, 3)
    coco = load_ground_truth(gt_path)
    res = load_results(perfect_results(3), coco)
    chosen, _ = choose_thresholds(coco, res)
    assert all(v == {"score": 0.9, "precision": 1.0, "recall": 1.0, "f": 1.0} for v in chosen.values())
    m = np.array(confusion_matrix(coco, res, score_thr=0.5)["matrix"])
    assert (m == np.diag([4, 2, 2, 0])).all()
