"""``swin-maskrcnn analyze``: the analysis.json contract, the summary, bad input, and --checkpoint
with --write-thresholds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from swin_maskrcnn import SwinMaskRCNN, load_model
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.modeling.config import tiny_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diagnostics.planted import results as planted_results, write  # noqa: E402

from conftest import make_tiny_coco  # noqa: E402

ERRORS = {"cls", "loc", "both", "dupe", "bkg", "missed"}


def test_contract_and_summary(tmp_path, capsys):
    gt, res = write(tmp_path, 3)
    out = tmp_path / "out"
    assert main(["analyze", "--ann", str(gt), "--results", str(res), "--out", str(out), "--score-thr", "0.5",
                 "--no-report"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    for t in ("bbox", "segm"):
        assert isinstance(a[t]["AP"], float)
        assert set(a[t]["errors"]) == ERRORS and set(a[t]["dAP"]) == ERRORS
        assert a[t]["errors"] == {k: 1 for k in ERRORS}
        assert all(isinstance(v, float) for v in a[t]["dAP"].values())
    assert a["confusion"] == {"iou": 0.5, "score_thr": 0.5, "labels": ["A", "B", "C", "background"],
                              "matrix": [[2, 0, 0, 2], [1, 0, 0, 1], [0, 0, 1, 1], [2, 1, 1, 0]]}
    assert a["thresholds"]["beta"] == 1.0
    assert a["thresholds"]["per_class"]["A"] == pytest.approx({"score": 0.9, "precision": 1.0, "recall": 0.5,
                                                               "f": 2 / 3})
    printed = capsys.readouterr().out
    assert "bbox: AP" in printed and "cls 1" in printed and "A 0.900" in printed


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_naming_the_item(tmp_path, capsys):
    gt, res = write(tmp_path, 3)
    base = ["analyze", "--ann", str(gt), "--out", str(tmp_path / "o"), "--no-report", "--results"]
    entries, _ = planted_results(3)
    for k, change, expect in [(3, {"image_id": 42}, "result 3 is for image 42"),
                              (1, {"category_id": 9}, "result 1 (image 1) has category id 9")]:
        bad = [dict(e) for e in entries]
        bad[k].update(change)
        p = tmp_path / f"bad{k}.json"
        p.write_text(json.dumps(bad))
        line = _one_error_line(capsys, [*base, str(p)])
        assert expect in line and line.startswith("swin-maskrcnn analyze: error:")
    p = tmp_path / "cut.json"
    p.write_text(res.read_text()[:100])
    assert "cut.json: not a valid JSON file" in _one_error_line(capsys, [*base, str(p)])
    assert "results file not found" in _one_error_line(capsys, [*base, str(tmp_path / "none.json")])
    gt_bad = tmp_path / "gt_bad.json"
    gt_bad.write_text("[]")
    line = _one_error_line(capsys, ["analyze", "--ann", str(gt_bad), "--out", str(tmp_path / "o"), "--results", str(res)])
    assert "gt_bad.json: not a COCO instance annotation file" in line


def test_checkpoint_mode_writes_thresholds_that_travel(tmp_path, capsys):
    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=3)
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                            roi=dict(max_per_img=30), test_scale=(128, 128))
    ckpt = save_checkpoint(tmp_path / "model.pt", SwinMaskRCNN(cfg).eval(), cfg, ["rect", "ellipse"], {3: 0, 7: 1})
    out, written = tmp_path / "out", tmp_path / "deploy.safetensors"
    assert main(["analyze", "--ann", str(ann), "--checkpoint", str(ckpt), "--images", str(imgs), "--out", str(out),
                 "--no-progress", "--device", "cpu", "--worst", "2", "--write-thresholds", str(written)]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert a["images"]["num_images"] == 3 and a["images"]["num_results"] > 0
    chosen = {n: v["score"] for n, v in a["thresholds"]["per_class"].items()}
    assert chosen and set(chosen) <= {"rect", "ellipse"}
    deployed = load_model(written)
    assert deployed.cfg.roi.score_thr_per_class == chosen
    assert deployed.cfg.model_copy(update={"roi": deployed.cfg.roi.model_copy(
        update={"score_thr_per_class": {}})}) == cfg  # nothing else changed
    assert (out / "report.html").is_file() and len(list((out / "worst").glob("*.png"))) == 2
    # --checkpoint without --images, --write-thresholds without --checkpoint: one line each
    assert "--checkpoint needs --images" in _one_error_line(
        capsys, ["analyze", "--ann", str(ann), "--checkpoint", str(ckpt), "--out", str(out)])


def test_checkpoint_mode_slices_as_predict_does(tmp_path, capsys):
    """analyze --checkpoint --slice predicts exactly what predict --slice writes for the same images."""
    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=2)
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                            roi=dict(max_per_img=30), test_scale=(128, 128))
    ckpt = save_checkpoint(tmp_path / "model.pt", SwinMaskRCNN(cfg).eval(), cfg, ["rect", "ellipse"], {3: 0, 7: 1})
    sl = ["--slice", "64", "64", "--overlap", "0.25", "--tta"]
    out = tmp_path / "out"
    assert main(["analyze", "--ann", str(ann), "--checkpoint", str(ckpt), "--images", str(imgs), "--out", str(out),
                 "--no-progress", "--device", "cpu", "--no-report", *sl]) == 0
    preds = tmp_path / "preds.json"
    assert main(["predict", "--checkpoint", str(ckpt), "--out", str(preds), "--device", "cpu", "--precision", "fp32",
                 "--no-progress", *sl, str(imgs)]) == 0
    ours = json.loads((out / "results.json").read_text())
    theirs = json.loads(preds.read_text())
    names = {i["id"]: i["file_name"] for i in json.loads(Path(ann).read_text())["images"]}
    ours_k = sorted((names[r["image_id"]], round(r["score"], 6), r["category_id"], r["segmentation"]["counts"])
                    for r in ours)
    theirs_k = sorted((Path(r["file_name"]).name, round(r["score"], 6), r["category_id"], r["segmentation"]["counts"])
                      for r in theirs)
    assert ours_k and ours_k == theirs_k
    line = _one_error_line(capsys, ["analyze", "--ann", str(ann), "--results", str(preds), "--out", str(out),
                                    "--slice", "64", "64"])
    assert "--slice / --tta need --checkpoint" in line
