"""faster-coco-eval (the ``[fasteval]`` extra) gives pycocotools' figures: every AP / AR the metrics
dict holds, per class too, on the same results (dense synthetic detections: shifted copies of the
ground-truth masks and false positives, so IoUs spread over all thresholds), bbox and segm,
maxDets up to 400, with and without an image subset, and with no results. Skips when absent.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from swin_maskrcnn.evaluation import evaluate_coco, masks_to_rles, resolve_eval_backend


def _scene(seed: int = 0, n_img: int = 6, dets: int = 60) -> tuple[COCO, list[dict]]:
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    cats = [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}, {"id": 9, "name": "never"}]
    aid = 1
    for i in range(1, n_img + 1):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        images.append({"id": i, "height": h, "width": w, "file_name": f"{i}.png"})
        gts = []
        for _ in range(int(rng.integers(2, 9))):
            y0, x0 = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
            m = np.zeros((h, w), bool)
            m[y0:y0 + int(rng.integers(4, 30)), x0:x0 + int(rng.integers(4, 30))] = True
            rle = masks_to_rles(m[None])[0]
            cat = int(rng.choice([3, 8]))
            anns.append({"id": aid, "image_id": i, "category_id": cat, "segmentation": rle, "iscrowd": 0,
                         "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
            aid += 1
            gts.append((m, cat))
        for k in range(dets):
            m, cat = gts[k % len(gts)]
            shift = rng.integers(-3, 4, size=2) if k < 2 * len(gts) else rng.integers(-40, 40, size=2)
            d = np.roll(m, tuple(int(s) for s in shift), axis=(0, 1))
            if not d.any():
                continue
            rle = masks_to_rles(d[None])[0]
            results.append({"image_id": i, "category_id": cat if rng.random() > 0.1 else 8, "score": float(rng.random()),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "segmentation": rle})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    gt.createIndex()
    return gt, results


def _same(a: dict, b: dict) -> None:
    for t in a:
        for k, v in a[t].items():
            if isinstance(v, float):
                assert f"{b[t][k]:.4f}" == f"{v:.4f}", (t, k, v, b[t][k])  # the printed digits
                assert b[t][k] == pytest.approx(v, abs=1e-12), (t, k)
        for name, v in a[t]["per_class_AP"].items():
            w = b[t]["per_class_AP"][name]
            assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(v, abs=1e-12), (t, name)


@pytest.mark.parametrize("max_dets", [(1, 10, 100), (1, 100, 400)])
def test_faster_coco_eval_equals_pycocotools(max_dets):
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is the optional [fasteval] extra")
    gt, results = _scene()
    ref = evaluate_coco(gt, results, max_dets=max_dets, backend="pycocotools")
    got = evaluate_coco(gt, results, max_dets=max_dets, backend="faster-coco-eval")
    assert 0.01 < ref["segm"]["AP"] < 0.99 and 0.01 < ref["bbox"]["AP"] < 0.99  # not a degenerate scene
    _same(ref, got)


def test_faster_coco_eval_subset_and_empty():
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is the optional [fasteval] extra")
    gt, results = _scene(seed=1)
    _same(evaluate_coco(gt, results, img_ids=[2, 4, 5], backend="pycocotools"),
          evaluate_coco(gt, results, img_ids=[2, 4, 5], backend="faster-coco-eval"))
    _same(evaluate_coco(gt, [], backend="pycocotools"), evaluate_coco(gt, [], backend="faster-coco-eval"))


def test_backend_resolution():
    import importlib.util

    installed = importlib.util.find_spec("faster_coco_eval") is not None
    assert resolve_eval_backend("auto") == ("faster-coco-eval" if installed else "pycocotools")
    assert resolve_eval_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="backend"):
        resolve_eval_backend("tide")
