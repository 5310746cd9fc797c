"""COCO evaluation: GT-as-prediction gives AP 1 on both real datasets, maxDets beyond 100, empty
results, conversion of predictions, per-class AP, evaluate_model plumbing, atomic json."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from swin_maskrcnn.data import CocoInstanceDataset, build_test_transforms
from swin_maskrcnn.coco_results import predictions_to_coco_results, save_results_json
from swin_maskrcnn.evaluation import evaluate_coco, evaluate_model, flatten_metrics

from conftest import COCO128, NUCLEI, needs_coco128, needs_nuclei

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def gt_as_predictions(ds: CocoInstanceDataset, indices) -> tuple[list[dict], list[int]]:
    """The dataset's own training targets (crowd excluded, contiguous labels, decoded masks) as
    perfect predictions at the original size."""
    preds, ids = [], []
    for i in indices:
        t = ds.get_raw_target(i)
        n = len(t["labels"])
        preds.append(
            {"boxes": t["boxes"], "scores": torch.ones(n), "labels": t["labels"], "masks": t["masks"].bool()}
        )
        ids.append(t["image_id"])
    return preds, ids


# ---------------------------------------------------------------------------------- real data
@needs_coco128
def test_gt_as_predictions_gives_ap_1_on_coco128_val():
    ds = CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images")
    preds, ids = gt_as_predictions(ds, range(len(ds)))
    results = predictions_to_coco_results(preds, ids, ds.label_to_cat_id)
    assert len(results) == 190
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = evaluate_coco(ds.coco, results, class_names=ds.class_names)
    assert out.getvalue() == ""  # COCOeval's prints went to logging
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
        assert m["AR@100"] == pytest.approx(1.0)
        present = {ds.class_names[ds.cat_id_to_label[a["category_id"]]] for a in ds.coco.anns.values()}
        assert {k for k, v in m["per_class_AP"].items() if not math.isnan(v)} == present
        assert all(m["per_class_AP"][k] == pytest.approx(1.0) for k in present)
        assert len(m["top5"]) == 5 and len(m["bottom5"]) == 5
    # the same predictions with maxDets (1, 100, 400): still 1, and the keys follow max_dets
    m400 = evaluate_coco(ds.coco, results, max_dets=(1, 100, 400))
    assert m400["segm"]["AP"] == pytest.approx(1.0) and m400["bbox"]["AR@400"] == pytest.approx(1.0)


@needs_nuclei
def test_gt_as_predictions_on_nuclei_needs_400_detections():
    ds = CocoInstanceDataset(NUCLEI / "annotations/train.json", NUCLEI / "images")
    counts = [ds.get_image_info(i)["num_instances"] for i in range(len(ds))]
    # COCOeval's matching is quadratic per image: crowded images with 101..160 nuclei keep it fast
    crowded = [i for i, c in enumerate(counts) if 100 < c <= 160][:2]
    sparse = [i for i, c in enumerate(counts) if c <= 40][:10]
    indices = crowded + sparse
    assert len(crowded) == 2
    preds, ids = gt_as_predictions(ds, indices)
    results = predictions_to_coco_results(preds, ids, ds.label_to_cat_id)
    assert len(results) == sum(counts[i] for i in indices)
    m400 = evaluate_coco(ds.coco, results, max_dets=(1, 100, 400), img_ids=ids, class_names=ds.class_names)
    for iou_type in ("bbox", "segm"):
        assert m400[iou_type]["AP"] == pytest.approx(1.0)
        assert m400[iou_type]["AR@400"] == pytest.approx(1.0)
        assert m400[iou_type]["AR@100"] < 1.0  # capped on the crowded images
        assert m400[iou_type]["per_class_AP"]["nucleus"] == pytest.approx(1.0)
    m100 = evaluate_coco(ds.coco, results, iou_types=("segm",), max_dets=(1, 10, 100), img_ids=ids)
    assert m100["segm"]["AP"] < 0.99  # with 100 detections the crowded images lose recall


@needs_coco128
def test_evaluate_model_with_a_perfect_fake_model():
    ds = CocoInstanceDataset(
        COCO128 / "annotations/val.json", COCO128 / "images", transforms=build_test_transforms((1333, 800))
    )
    raw = CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images")

    class PerfectModel(torch.nn.Module):
        """Returns the ground truth at the original size, in dataset order (as a model would,
        mapping its predictions back with original_sizes)."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0
            self.seen_sizes = []

        def forward(self, images, original_sizes=None):
            assert not self.training and not torch.is_grad_enabled()
            outs = []
            for im, size in zip(images, original_sizes):
                assert im.dtype == torch.float32 and im.shape[0] == 3 and max(im.shape[-2:]) > max(size)
                t = raw.get_raw_target(self.calls)
                assert tuple(size) == t["orig_size"]
                n = len(t["labels"])
                outs.append({"boxes": t["boxes"], "scores": torch.ones(n), "labels": t["labels"], "masks": t["masks"].bool()})
                self.calls += 1
            return outs

    model = PerfectModel()
    model.train()
    metrics, results = evaluate_model(model, ds, batch_size=2, max_images=5, max_dets=(1, 10, 100), progress=False)
    assert model.training  # mode restored
    assert metrics["num_images"] == 5
    n_gt = sum(raw.get_image_info(i)["num_instances"] for i in range(5))
    assert len(results) == n_gt and metrics["mean_num_predictions"] == pytest.approx(n_gt / 5)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    flat = flatten_metrics(metrics)
    assert flat["segm/AP"] == pytest.approx(1.0) and "bbox/AR@100" in flat


def test_evaluate_model_bf16_runs_a_bf16_copy_and_leaves_the_model_fp32():
    """``precision='bf16'``: the model called is a bf16 copy (converted once, the given model untouched)."""
    ds = CocoInstanceDataset(
        COCO128 / "annotations/val.json", COCO128 / "images", transforms=build_test_transforms((1333, 800))
    )
    raw = CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images")

    class PerfectModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.calls = 0
            self.dtypes = []

        def forward(self, images, original_sizes=None):
            outs = []
            for _ in images:
                self.dtypes.append(self.w.dtype)
                t = raw.get_raw_target(self.calls)
                n = len(t["labels"])
                outs.append({"boxes": t["boxes"], "scores": torch.ones(n), "labels": t["labels"], "masks": t["masks"].bool()})
                self.calls += 1
            return outs

    model = PerfectModel()
    metrics, _ = evaluate_model(model, ds, batch_size=1, max_images=3, progress=False, precision="bf16")
    assert model.calls == 0 and model.w.dtype == torch.float32 and float(model.w) == 1.0  # the copy ran
    assert metrics["num_images"] == 3 and metrics["bbox"]["AP"] == pytest.approx(1.0)
    evaluate_model(model, ds, batch_size=1, max_images=2, progress=False, precision="fp32")
    assert model.dtypes == [torch.float32, torch.float32]


# ---------------------------------------------------------------------------------- synthetic
def _synthetic_gt() -> COCO:
    """Two 40x50 images; categories 5 (a) and 9 (b) and 12 (c, no instance); a crowd region."""
    def rect(x, y, w, h):
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]

    anns = [
        dict(id=1, image_id=1, category_id=5, bbox=[2, 2, 10, 12], segmentation=rect(2, 2, 10, 12), area=120, iscrowd=0),
        dict(id=2, image_id=1, category_id=9, bbox=[20, 5, 15, 20], segmentation=rect(20, 5, 15, 20), area=300, iscrowd=0),
        dict(id=3, image_id=2, category_id=5, bbox=[5, 20, 30, 15], segmentation=rect(5, 20, 30, 15), area=450, iscrowd=0),
        dict(id=4, image_id=2, category_id=9, bbox=[0, 0, 50, 15], segmentation=rect(0, 0, 50, 15), area=750, iscrowd=1),
    ]
    gt = COCO()
    gt.dataset = {
        "images": [dict(id=1, width=50, height=40, file_name="1.png"), dict(id=2, width=50, height=40, file_name="2.png")],
        "annotations": anns,
        "categories": [dict(id=5, name="a"), dict(id=9, name="b"), dict(id=12, name="c")],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


LABEL_TO_CAT = {0: 5, 1: 9, 2: 12}


def _pred_from_gt(gt: COCO, img_id: int, wrong_class_b: bool = False) -> dict:
    anns = [a for a in gt.imgToAnns[img_id] if not a["iscrowd"]]  # crowd GT is not predicted
    cat_to_label = {v: k for k, v in LABEL_TO_CAT.items()}
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
    labels = torch.tensor([cat_to_label[a["category_id"]] for a in anns])
    if wrong_class_b:
        labels = torch.where(labels == 1, torch.tensor(2), labels)
    masks = torch.from_numpy(np.stack([gt.annToMask(a) for a in anns])).bool()
    return {"boxes": boxes, "scores": torch.linspace(1.0, 0.9, len(anns)), "labels": labels, "masks": masks}


def test_predictions_to_coco_results_conversion():
    masks = torch.zeros((2, 6, 8), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:6, 0:8] = True
    pred = {
        "boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.5, 4.0, 8.0, 6.0]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 0]),
        "masks": masks,
    }
    res = predictions_to_coco_results([pred, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 6, 8, dtype=torch.bool)}], [42, 43], {0: 7, 1: 3})
    assert len(res) == 2
    assert res[0]["image_id"] == 42 and res[0]["category_id"] == 3 and res[1]["category_id"] == 7
    assert res[0]["bbox"] == [2.0, 1.0, 3.0, 2.0] and res[1]["bbox"] == [0.5, 4.0, 7.5, 2.0]
    assert res[0]["score"] == pytest.approx(0.9)
    assert isinstance(res[0]["segmentation"]["counts"], str) and res[0]["segmentation"]["size"] == [6, 8]
    json.dumps(res)  # json-ready
    for k in range(2):
        decoded = mask_utils.decode({"size": [6, 8], "counts": res[k]["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), masks[k].numpy())
    no_masks = predictions_to_coco_results([{k: v for k, v in pred.items() if k != "masks"}], [42], {0: 7, 1: 3})
    assert "segmentation" not in no_masks[0]
    with pytest.raises(ValueError):
        predictions_to_coco_results([pred], [42], {0: 7})  # label 1 unmapped


def test_synthetic_perfect_with_crowd_and_per_class():
    gt = _synthetic_gt()
    preds = [_pred_from_gt(gt, 1), _pred_from_gt(gt, 2)]
    results = predictions_to_coco_results(preds, [1, 2], LABEL_TO_CAT)
    m = evaluate_coco(gt, results)
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(1.0)
        assert m[t]["per_class_AP"]["a"] == pytest.approx(1.0) and m[t]["per_class_AP"]["b"] == pytest.approx(1.0)
        assert math.isnan(m[t]["per_class_AP"]["c"])  # no ground truth
        assert [n for n, _ in m[t]["top5"]] == ["a", "b"]
    # class b predicted as c: b has GT but no prediction (AP 0); c has predictions but no GT (NaN)
    bad = predictions_to_coco_results([_pred_from_gt(gt, 1, True), _pred_from_gt(gt, 2, True)], [1, 2], LABEL_TO_CAT)
    m2 = evaluate_coco(gt, bad, class_names=["A", "B", "C"])
    for t in ("bbox", "segm"):
        pc = m2[t]["per_class_AP"]
        assert pc["A"] == pytest.approx(1.0) and pc["B"] == pytest.approx(0.0) and math.isnan(pc["C"])
        assert m2[t]["AP"] == pytest.approx(0.5)
        assert m2[t]["top5"][0] == ("A", pytest.approx(1.0)) and m2[t]["bottom5"][0] == ("B", pytest.approx(0.0))


def test_empty_results_give_zero_without_crash():
    gt = _synthetic_gt()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        m = evaluate_coco(gt, [], max_dets=(1, 100, 400))
    assert out.getvalue() == ""
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == 0.0 and m[t]["AP50"] == 0.0 and m[t]["AR@400"] == 0.0
        assert m[t]["per_class_AP"]["a"] == 0.0 and m[t]["top5"][0][1] == 0.0


def test_max_dets_beyond_100_is_used_for_ap():
    """150 objects in one image, all predicted: AP is 1 with maxDets 400 but < 1 with 100."""
    h, w = 60, 300
    anns, masks, boxes = [], [], []
    for k in range(150):
        x, y = (k % 50) * 6, (k // 50) * 20
        anns.append(dict(id=k + 1, image_id=1, category_id=1, bbox=[x, y, 4, 10], area=40, iscrowd=0,
                         segmentation=[[x, y, x + 4, y, x + 4, y + 10, x, y + 10]]))
    gt = COCO()
    gt.dataset = {"images": [dict(id=1, width=w, height=h)], "annotations": anns, "categories": [dict(id=1, name="n")]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    for a in anns:
        masks.append(gt.annToMask(a))
        boxes.append([a["bbox"][0], a["bbox"][1], a["bbox"][0] + 4, a["bbox"][1] + 10])
    pred = {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.linspace(1, 0.5, 150),
            "labels": torch.zeros(150, dtype=torch.long), "masks": torch.from_numpy(np.stack(masks)).bool()}
    res = predictions_to_coco_results([pred], [1], {0: 1})
    m400 = evaluate_coco(gt, res, max_dets=(1, 100, 400))
    m100 = evaluate_coco(gt, res, max_dets=(1, 10, 100))
    for t in ("bbox", "segm"):
        assert m400[t]["AP"] == pytest.approx(1.0)
        assert m400[t]["AR@100"] == pytest.approx(100 / 150) and m400[t]["AR@400"] == pytest.approx(1.0)
        assert m100[t]["AP"] < 0.7 and m100[t]["AR@100"] == pytest.approx(100 / 150)
    with pytest.raises(ValueError):
        evaluate_coco(gt, res, max_dets=(100, 10))


def test_save_results_json_atomic(tmp_path):
    gt = _synthetic_gt()
    results = predictions_to_coco_results([_pred_from_gt(gt, 1)], [1], LABEL_TO_CAT)
    path = save_results_json(results, tmp_path / "sub" / "results.json")
    assert json.loads(path.read_text()) == results
    save_results_json([], path)  # overwrite
    assert json.loads(path.read_text()) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temp files left
    # pycocotools can load what was written
    save_results_json(results, path)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(path))
    assert len(dt.anns) == len(results)
