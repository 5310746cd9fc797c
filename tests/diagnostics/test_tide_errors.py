"""TIDE error types, counts and dAP on hand-made files with one planted error of each type."""
from __future__ import annotations

import json

import pytest

from swin_maskrcnn.diagnostics.errors import tide_errors
from swin_maskrcnn.diagnostics.inputs import ResultsError, load_ground_truth, load_results
from swin_maskrcnn.evaluation import evaluate_coco

from .planted import perfect_results, results, write


def _load(tmp_path, n):
    gt_path, res_path = write(tmp_path, n)
    coco = load_ground_truth(gt_path)
    return coco, load_results(res_path, coco)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_three_classes_one_error_of_each_type(tmp_path, iou_type):
    coco, res = _load(tmp_path, 3)
    r = tide_errors(coco, res, iou_type)
    assert r.errors == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "missed": 1}
    _, names = results(3)
    kinds = {names[k]: v for k, v in r.det_kind.items()}
    assert kinds == {"d1": "tp", "d2": "dupe", "d3": "cls", "d4": "loc", "d5": "both", "d6": "bkg", "d7": "tp",
                     "d9": "tp", "d10": "tp", "e1": "tp"}
    assert r.gt_kind == {1: "tp", 2: "covered", 3: "covered", 4: "tp", 5: "tp", 6: "missed", 7: "tp", 8: "tp"}
    assert r.errors_per_image == {1: 6, 2: 0}
    # TIDE's AP at IoU 0.5, by hand: 101 recall points per class, 3 classes.
    # A (4 GT with image 2's): .99T .9T .8F .7F .6F .3T -> P 1 up to R 2/4 (51 points), then
    #   max P after = 3/6 for R 3/4 (25 points) -> 51 + 12.5 = 63.5
    # B (2 GT): .5F .2T -> P .5 up to R .5 (51 points) -> 25.5
    # C (2 GT): .97F .95T -> 25.5
    base = (63.5 + 25.5 + 25.5) / 303
    assert r.ap == pytest.approx(base, abs=1e-12)
    # independent reference: COCOeval's AP50 on the same files
    assert evaluate_coco(coco, res, iou_types=(iou_type,))[iou_type]["AP50"] == pytest.approx(base, abs=1e-9)
    # fix cls: d3 becomes B's TP at .7; A loses an FP: .99T .9T .8F .6F .3T -> 51 + 25 * 3/5 = 66
    #   B: .7T .5F .2T -> P 1 to R .5 (51), then 2/3 for R 1 (50) -> 51 + 33.333
    fixed_cls = (66 + 51 + 50 * 2 / 3 + 25.5) / 303
    # fix loc: d4 is A's TP: .99T .9T .8F .7F .6T .3T -> 51, R 3/4: P max(3/5, 4/6) = 2/3 (25), R 1: 2/3 (25)
    fixed_loc = (51 + 50 * 2 / 3 + 25.5 + 25.5) / 303
    # fix dupe: A without d2: .99T .9T .7F .6F .3T -> 51 + 25 * 3/5 = 66
    fixed_dupe = (66 + 25.5 + 25.5) / 303
    # fix both: B without d5: .2T -> 51 ; fix bkg: C without d6: .95T -> 51
    fixed_both = (63.5 + 51 + 25.5) / 303
    fixed_bkg = (63.5 + 25.5 + 51) / 303
    # fix missed: C has 1 GT: .97F .95T -> P .5 at R 1: 101 points * .5
    fixed_missed = (63.5 + 25.5 + 50.5) / 303
    expected = {"cls": fixed_cls, "loc": fixed_loc, "dupe": fixed_dupe, "both": fixed_both, "bkg": fixed_bkg,
                "missed": fixed_missed}
    for k, v in expected.items():
        assert r.dAP[k] == pytest.approx(v - base, abs=1e-12), k


def test_one_class_variant(tmp_path):
    coco, res = _load(tmp_path, 1)
    r = tide_errors(coco, res, "bbox")
    assert r.errors == {"cls": 0, "loc": 1, "both": 0, "dupe": 1, "bkg": 1, "missed": 1}
    _, names = results(1)
    assert {names[k]: v for k, v in r.det_kind.items()} == {
        "d1": "tp", "d2": "dupe", "d4": "loc", "d6": "bkg", "d7": "tp", "d9": "tp", "e1": "tp"}
    # one class, 6 GT (g1 g3 g4 g5 g6 g8): .99T .97F .95T .9T .8F .6F .3T
    # P: 1, .5, 2/3, 3/4, 3/5, 1/2, 4/7 ; R: 1/6 .. 4/6; monotone P at R 1/6: 1 (17 points),
    # R 2/6: 3/4 (.17-.33, 17), R 3/6: 3/4 (.34-.50, 17), R 4/6: 4/7 (.51-.66, 16 points)
    base = (17 + 17 * 0.75 * 2 + 16 * 4 / 7) / 101
    assert r.ap == pytest.approx(base, abs=1e-12)
    assert evaluate_coco(coco, res, iou_types=("bbox",))["bbox"]["AP50"] == pytest.approx(base, abs=1e-9)
    assert r.dAP["cls"] == 0 and r.dAP["both"] == 0


@pytest.mark.parametrize("n", [1, 3])
def test_perfect_predictions_no_error_ap_one(tmp_path, n):
    gt_path, _ = write(tmp_path, n)
    coco = load_ground_truth(gt_path)
    res = load_results(perfect_results(n), coco)
    for t in ("bbox", "segm"):
        r = tide_errors(coco, res, t)
        assert sum(r.errors.values()) == 0 and r.ap == 1.0 and all(v == 0 for v in r.dAP.values())
        assert evaluate_coco(coco, res, iou_types=(t,))[t]["AP"] == pytest.approx(1.0)


def test_bad_results_name_the_entry(tmp_path):
    gt_path, res_path = write(tmp_path, 3)
    coco = load_ground_truth(gt_path)
    res, _ = results(3)
    bad = dict(res[2], image_id=99)
    with pytest.raises(ResultsError, match=r"result 2 is for image 99, which .*gt3.json does not have"):
        load_results([*res[:2], bad], coco)
    with pytest.raises(ResultsError, match=r"result 1 \(image 1\) has category id 7"):
        load_results([res[0], dict(res[1], category_id=7)], coco)
    with pytest.raises(ResultsError, match=r"result 0 \(image 1\) has no 'score'"):
        load_results([{k: v for k, v in res[0].items() if k != "score"}], coco)
    res_path.write_text(json.dumps(res)[:-20])
    with pytest.raises(ResultsError, match="res3.json: not a valid JSON file"):
        load_results(res_path, coco)
    res_path.write_text(json.dumps({"annotations": res}))
    with pytest.raises(ResultsError, match="res3.json: a COCO results file is a list"):
        load_results(res_path, coco)


def test_results_by_file_name(tmp_path):
    """predict's files name images by file_name (no image_id): matched to the ground truth's ids."""
    gt_path, _ = write(tmp_path, 3)
    coco = load_ground_truth(gt_path)
    res, _ = results(3)
    by_name = [{**{k: v for k, v in r.items() if k != "image_id"}, "file_name": f"{r['image_id']:03d}.png"} for r in res]
    assert [r["image_id"] for r in load_results(by_name, coco)] == [r["image_id"] for r in res]
    with pytest.raises(ResultsError, match="result 0 is for file 'nope.png'"):
        load_results([dict(by_name[0], file_name="nope.png")], coco)
