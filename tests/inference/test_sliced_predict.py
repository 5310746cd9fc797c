"""Sliced and augmented prediction with a random-weight model: Predictor, predict, evaluate, TTA.

References: the model's own ``predict`` (one tile covering the image), pycocotools (RLEs, COCOeval),
and the model run on the mirrored image as a whole (flip TTA)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from swin_maskrcnn import Predictor, SwinMaskRCNN
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.inference import (Instances, SliceConfig, TTAConfig, crops_to_dense, merge_instances,
                                     predict_instances, tile_starts)
from swin_maskrcnn.modeling.config import tiny_model_config

from conftest import make_tiny_coco, tiny_train_config

SCALE = (128, 96)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("sliced_ckpt")
    ann, imgs = make_tiny_coco(root / "data", n_images=1)
    cfg = tiny_train_config(ann, imgs, root / "runs", "p")
    cfg.model = tiny_model_config(num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                                  roi=dict(max_per_img=25, score_thr=0.0), test_scale=SCALE)
    torch.manual_seed(0)
    model = SwinMaskRCNN(cfg.model).eval()
    return save_checkpoint(root / "model_final.pt", model, cfg, ["rect", "ellipse"], {3: 0, 7: 1})


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    for _ in range(6):
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        a[y : y + int(rng.integers(8, 20)), x : x + int(rng.integers(8, 20))] = rng.integers(120, 255, 3)
    return a


def _dense(inst: Instances, h, w, thr=0.5):
    return crops_to_dense(inst.binary_crops(thr), inst.windows, h, w)


def _mirror(inst: Instances, w: int) -> Instances:
    """Detections of the mirrored image, mirrored back."""
    b, win = inst.boxes, inst.windows
    return Instances(torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1), inst.scores, inst.labels,
                     torch.stack([w - win[:, 2], win[:, 1], w - win[:, 0], win[:, 3]], 1),
                     [c.flip(-1) for c in inst.crops], inst.cut, inst.source)


def test_one_tile_covering_the_image_equals_the_models_own_prediction(ckpt):
    image = _image(90, 130)
    plain = Predictor(ckpt, device="cpu", scale=None).predict([image])[0]
    sliced = Predictor(ckpt, device="cpu", scale=None, slicing=SliceConfig(200, 300)).predict([image])[0]
    assert len(plain["scores"]) > 5
    order = torch.argsort(plain["scores"], descending=True, stable=True)
    assert torch.equal(sliced["scores"], plain["scores"][order])
    assert torch.equal(sliced["boxes"], plain["boxes"][order])
    assert torch.equal(sliced["labels"], plain["labels"][order])
    assert torch.equal(crops_to_dense(sliced["mask_crops"], sliced["mask_windows"], 90, 130), plain["masks"][order])
    assert sliced["class_names"] == [["rect", "ellipse"][i] for i in sliced["labels"].tolist()]
    assert "masks" not in sliced  # never full-image masks per detection


def test_one_tile_in_bf16_equals_the_bf16_models_own_prediction(ckpt):
    """Slicing honours ``precision='bf16'``: one covering tile is the plain bf16 prediction (the same bf16 copy)."""
    image = _image(90, 130)
    plain = Predictor(ckpt, device="cpu", scale=None, precision="bf16").predict([image])[0]
    p = Predictor(ckpt, device="cpu", scale=None, slicing=SliceConfig(200, 300), precision="bf16")
    sliced = p.predict([image])[0]
    assert p.runner.backbone.patch_embed.projection.weight.dtype == torch.bfloat16
    order = torch.argsort(plain["scores"], descending=True, stable=True)
    assert len(plain["scores"]) > 5 and torch.equal(sliced["scores"], plain["scores"][order])
    assert torch.equal(sliced["boxes"], plain["boxes"][order])
    assert torch.equal(crops_to_dense(sliced["mask_crops"], sliced["mask_windows"], 90, 130), plain["masks"][order])


def test_tiles_are_batched_and_mapped_to_image_coordinates(ckpt):
    """A detection of a tile at (x0, y0) is the model's detection on that tile, shifted by (x0, y0)."""
    from swin_maskrcnn import load_model

    model = load_model(ckpt)
    image = _image(100, 150, seed=1)
    cfg = SliceConfig(64, 80, overlap=0.25, batch=3, merge="nms", merge_iou=1.0, merge_metric="iou")
    inst = predict_instances(model, image, cfg)
    xs, ys = tile_starts(150, 80, 0.25), tile_starts(100, 64, 0.25)
    expected = []
    for y in ys:
        for x in xs:
            (out,) = model.predict([image[y : y + 64, x : x + 80]], resize=False)
            shift = torch.tensor([x, y, x, y], dtype=out["boxes"].dtype)
            expected += [torch.cat([s.reshape(1), b + shift]) for s, b in zip(out["scores"], out["boxes"])]
    expected_t = torch.stack(expected)
    got = torch.cat([inst.scores.reshape(-1, 1), inst.boxes], dim=1)
    # a batch of 3 tiles and a tile alone differ in the last float bits (and by thread count), so each
    # detection is matched to one of the single-tile detections within a tolerance, not by rounding
    close = ((got[:, None, :1] - expected_t[None, :, :1]).abs() <= 1e-4).all(-1) & (
        (got[:, None, 1:] - expected_t[None, :, 1:]).abs() <= 1e-2
    ).all(-1)
    assert bool(close.any(1).all()), "a merged detection that no tile gave"
    # merge-iou 1.0 on masks removes only identical detections of overlapping tiles
    assert len(expected_t) > 5 and len(got) >= 0.9 * len(expected_t)


def test_flip_tta_equals_the_fuse_of_the_plain_and_the_mirrored_run(ckpt):
    from swin_maskrcnn import load_model

    model = load_model(ckpt)
    h, w = 48, 100
    assert tile_starts(w, 40, 0.25) == [0, 30, 60]  # a grid symmetric under the mirror
    image = _image(h, w, seed=2)
    cfg = SliceConfig(48, 40, overlap=0.25, batch=4)
    tta = predict_instances(model, image, cfg, TTAConfig(hflip=True))
    plain = predict_instances(model, image, cfg)
    mirrored = _mirror(predict_instances(model, np.ascontiguousarray(image[:, ::-1]), cfg), w)
    ref = merge_instances(Instances.cat([plain.with_source(0), mirrored.with_source(1)]), "fuse", 0.5, "iou",
                          mask_thr=0.5, views=2)
    assert len(tta) == len(ref) > 5
    assert torch.allclose(tta.scores, ref.scores, atol=1e-5)
    assert torch.allclose(tta.boxes, ref.boxes, atol=1e-3)
    agree = (_dense(tta, h, w) == _dense(ref, h, w)).float().mean()
    assert agree >= 0.9999
    # determinism
    again = predict_instances(model, image, cfg, TTAConfig(hflip=True))
    assert torch.equal(again.scores, tta.scores) and torch.equal(again.boxes, tta.boxes)
    assert all(torch.equal(a, b) for a, b in zip(again.crops, tta.crops))


def test_flip_tta_is_flip_equivariant(ckpt):
    """TTA of the mirrored image = the mirrored TTA of the image (the two views swap roles)."""
    from swin_maskrcnn import load_model

    model = load_model(ckpt)
    h, w = 80, 112
    image = _image(h, w, seed=3)
    tta = TTAConfig(hflip=True, scales=(1.0, 1.5))
    a = predict_instances(model, image, None, tta)
    b = _mirror(predict_instances(model, np.ascontiguousarray(image[:, ::-1]), None, tta), w)
    assert len(a) == len(b) > 5
    assert torch.allclose(a.scores, b.scores, atol=1e-4)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-2)
    assert (_dense(a, h, w) == _dense(b, h, w)).float().mean() >= 0.999


def test_tta_views_and_their_mapping(ckpt):
    """One view at factor 1 without flip is the model's own resized prediction; a 2x view sees the image
    twice as large and its boxes come back in image pixels (inside the image)."""
    from swin_maskrcnn import load_model

    model = load_model(ckpt)
    image = _image(72, 100, seed=4)
    (ref,) = model.predict([image])
    one = predict_instances(model, image, None, TTAConfig(hflip=False, scales=(1.0, 2.0)))
    assert len(one) > 0
    assert TTAConfig(hflip=True, scales=(0.5, 1.0)).views() == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]
    assert float(one.boxes[:, 2].max()) <= 100.0 + 1e-4 and float(one.boxes[:, 3].max()) <= 72.0 + 1e-4
    assert int(one.windows[:, 2].max()) <= 100 and int(one.windows[:, 3].max()) <= 72
    assert len(ref["scores"]) > 0


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def test_predict_cli_slice_rles_and_viz(ckpt, tmp_path):
    from pycocotools import mask as mask_utils

    image = _image(90, 140, seed=5)
    Image.fromarray(image).save(tmp_path / "big.png")
    out, viz = tmp_path / "p.json", tmp_path / "viz"
    rc = main(["predict", "--checkpoint", str(ckpt), "--out", str(out), "--viz", str(viz), "--device", "cpu",
               "--no-progress", "--slice", "64", "96", "--overlap", "0.3", "--slice-batch", "4", "--tta",
               "--precision", "fp32", str(tmp_path / "big.png")])  # (the CLI's auto is bf16 on an AMX CPU)
    assert rc == 0
    results = json.loads(out.read_text())
    ref = Predictor(ckpt, device="cpu", slicing=SliceConfig(64, 96, overlap=0.3, batch=4),
                    tta=TTAConfig(hflip=True)).predict([image])[0]
    assert len(results) == len(ref["scores"]) > 0
    dense = crops_to_dense(ref["mask_crops"], ref["mask_windows"], 90, 140).numpy()
    for r, m, s in zip(results, dense, ref["scores"].tolist()):
        assert r["segmentation"]["size"] == [90, 140]
        assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), m)
        assert r["score"] == pytest.approx(s)
    png = np.asarray(Image.open(viz / "big.png"))
    # drawn upscaled x4 (to >= 512 px on the long side, apps/visualize.py) for legible labels
    assert png.shape == (360, 560, 3) and not np.array_equal(png, image.repeat(4, 0).repeat(4, 1))


def test_viz_of_a_huge_image_is_downscaled():
    from swin_maskrcnn.inference.viz import draw_crops

    image = torch.zeros(3, 300, 500, dtype=torch.uint8)
    crop = torch.ones(40, 60, dtype=torch.bool)
    pic = draw_crops(image, torch.tensor([[100.0, 100, 160, 140]]), torch.tensor([1]), ["a", "b"], [crop],
                     torch.tensor([[100, 100, 160, 140]]), torch.tensor([0.9]), max_side=250)
    assert tuple(pic.shape) == (3, 150, 250)
    inside = pic[:, 55:65, 55:75].float().mean()  # the mask's area at half size is coloured
    assert inside > 20 and pic[:, 5:20, 5:20].float().mean() == 0


@pytest.mark.parametrize("args,word", [
    (["--slice", "64", "64", "--overlap", "1.0"], "--overlap"), (["--slice", "0", "64"], "tile size"),
    (["--slice", "64", "64", "--slice-batch", "0"], "--slice-batch"), (["--tta-scales", "0"], "--tta-scales"),
    (["--slice", "64", "64", "--merge-iou", "1.5"], "--merge-iou"),
])
def test_bad_slice_options_are_one_error_line(ckpt, tmp_path, capsys, args, word):
    Image.fromarray(_image(64, 64)).save(tmp_path / "x.png")
    rc = main(["predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.json"), "--device", "cpu",
               "--no-progress", str(tmp_path / "x.png"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and word in err[0] and err[0].startswith("swin-maskrcnn predict: error:")


def test_evaluate_slice_reports_coco_ap_at_full_resolution(ckpt, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=2, sizes=((160, 128),))
    metrics_path, results_path = tmp_path / "m.json", tmp_path / "r.json"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--ann", str(ann), "--images", str(imgs), "--device", "cpu",
               "--no-progress", "--slice", "64", "96", "--slice-batch", "4", "--with-full-image", "--max-dets", "1", "10", "500",
               "--out", str(metrics_path), "--results", str(results_path)])
    assert rc == 0
    metrics = json.loads(metrics_path.read_text())
    results = json.loads(results_path.read_text())
    assert results and all(r["segmentation"]["size"] == [128, 160] for r in results)
    gt = COCO(str(ann))
    for iou_type in ("bbox", "segm"):
        E = COCOeval(gt, gt.loadRes(str(results_path)), iouType=iou_type)
        E.params.maxDets = [1, 10, 500]
        E.evaluate()
        E.accumulate()
        p = E.eval["precision"][:, :, :, 0, -1]
        assert metrics[iou_type]["AP"] == pytest.approx(float(np.mean(p[p > -1])) if (p > -1).any() else -1.0)
    assert "segm: AP" in capsys.readouterr().out
