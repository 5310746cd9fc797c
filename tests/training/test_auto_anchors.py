"""model.rpn.auto_anchors (the fit before the first step, written into config and checkpoints) and
model.max_instances (one knob for the dense-scene caps)."""
from __future__ import annotations

import logging

import torch
import yaml

from conftest import tiny_train_config, write_box_coco
from swin_maskrcnn import load_model
from swin_maskrcnn.checkpoint.loader import load_checkpoint, read_checkpoint
from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.diagnostics.anchor_fit import fit_anchors
from swin_maskrcnn.modeling.anchors import base_anchors
from swin_maskrcnn.modeling.config import ModelConfig, tiny_model_config


def _small_object_set(tmp_path):
    # 16 px squares centred on the stride-4 grid of 128 x 128 images: scale 8 (32 px on P2) matches none at 0.7
    boxes = [(k, 1, [16 * i + 8, 16 * j + 8, 16, 16]) for k in range(4) for i in range(0, 6, 2) for j in range(0, 6, 2)]
    return write_box_coco(tmp_path / "data", [(128, 128)] * 4, boxes, [(1, "a"), (2, "b")])


def test_auto_anchors_written_into_config_and_checkpoints(tmp_path, caplog):
    ann, imgs = _small_object_set(tmp_path)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "auto", max_steps=2, probe_every_n_steps=0,
                            val_every_n_steps=1000, checkpoint_every_n_steps=1000)
    cfg.model.rpn.auto_anchors = True
    expected = fit_anchors(CocoInstanceDataset(ann, imgs), cfg.model, data_cfg=cfg.data)
    assert expected.changed and expected.suggested.bpr == 1.0 and expected.current.bpr == 0.0
    from swin_maskrcnn.training.train import train

    with caplog.at_level(logging.INFO, logger="swin_maskrcnn.training.auto_anchors"):
        summary = train(cfg)
    assert cfg.model.rpn.anchor_scales == [8.0]  # the caller's config is not changed
    fitted = expected.suggested.anchor_scales, expected.suggested.anchor_ratios
    assert summary["anchor_fit"]["suggested"]["anchor_scales"] == fitted[0]
    line = [r.getMessage() for r in caplog.records if "auto_anchors" in r.getMessage()]
    assert line and "bpr" in line[0] and "0.000 -> 1.000" in line[0]
    run = tmp_path / "runs" / "auto"
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["rpn"]
    assert (saved["anchor_scales"], saved["anchor_ratios"]) == (list(fitted[0]), list(fitted[1]))
    for path in (run / "model_final.pt", run / "checkpoints" / "last.ckpt"):
        model = load_model(path)
        assert (model.cfg.rpn.anchor_scales, model.cfg.rpn.anchor_ratios) == (list(fitted[0]), list(fitted[1]))
        assert torch.equal(model.rpn_head.anchor_generator.base[0], base_anchors(4, *fitted))  # the RPN uses them


def test_auto_anchors_off_keeps_the_configured_anchors(tmp_path):
    from swin_maskrcnn.training.auto_anchors import apply_auto_anchors

    ann, imgs = _small_object_set(tmp_path)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "off")
    assert apply_auto_anchors(cfg, CocoInstanceDataset(ann, imgs)) is None
    assert cfg.model.rpn.anchor_scales == [8.0]


def test_max_instances_sets_the_caps():
    cfg = tiny_model_config(max_instances=400)
    assert cfg.roi.max_per_img == 400
    assert cfg.rpn.max_per_img_test == 1000 and cfg.rpn.nms_pre_test == 1000  # already above: unchanged
    big = tiny_model_config(max_instances=1500)
    assert (big.roi.max_per_img, big.rpn.max_per_img_test, big.rpn.nms_pre_test) == (1500, 1500, 1500)
    assert big.rpn.max_per_img_train == 1000  # training caps are not touched
    assert cfg.eval_max_dets() == [1, 100, 400] and tiny_model_config(max_instances=50).eval_max_dets() == [1, 10, 50]
    plain = tiny_model_config()
    assert plain.max_instances is None and plain.roi.max_per_img == 100 and plain.eval_max_dets() is None
    # a round trip keeps it; the validator never edits a section shared with another config
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    shared = plain.roi
    ModelConfig(**{**plain.__dict__, "max_instances": 300})
    assert shared.max_per_img == 100


def test_max_instances_in_a_checkpoint_and_an_explicit_cap(tmp_path):
    from swin_maskrcnn import SwinMaskRCNN
    from swin_maskrcnn.checkpoint.native import save_checkpoint

    cfg = tiny_model_config(num_classes=1, max_instances=400)
    path = save_checkpoint(tmp_path / "m.pt", SwinMaskRCNN(cfg), cfg, ["a"], {1: 0})
    _, loaded, _ = load_checkpoint(path)
    assert loaded.max_instances == 400 and loaded.roi.max_per_img == 400
    _, capped, _ = load_checkpoint(path, roi={"max_per_img": 50})  # predict/evaluate --max-per-img 50
    assert capped.roi.max_per_img == 50 and capped.max_instances is None
    assert read_checkpoint(path)[1]["model_config"]["max_instances"] == 400


def test_nuclei_config_uses_max_instances():
    from conftest import REPO
    from swin_maskrcnn.training.config import load_config

    cfg = load_config(REPO / "configs" / "nuclei.yaml")
    assert cfg.model.max_instances == 400 and cfg.model.roi.max_per_img == 400
    assert cfg.model.rpn.max_per_img_test == 2000


def test_evaluate_uses_max_instances_as_the_largest_max_dets(tmp_path, capsys):
    import json

    from conftest import make_tiny_coco
    from swin_maskrcnn import SwinMaskRCNN
    from swin_maskrcnn.apps.cli import main
    from swin_maskrcnn.checkpoint.native import save_checkpoint

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=2)
    cfg = tiny_model_config(num_classes=2, max_instances=150, test_scale=(128, 128))
    ck = save_checkpoint(tmp_path / "m.pt", SwinMaskRCNN(cfg), cfg, ["rect", "ellipse"], {3: 0, 7: 1})
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--ann", str(ann), "--images", str(imgs), "--precision", "fp32", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    assert {"AR@1", "AR@100", "AR@150"} <= set(metrics["bbox"]) and "AR@10" not in metrics["bbox"]
    assert main(["evaluate", "--checkpoint", str(ck), "--ann", str(ann), "--images", str(imgs), "--precision", "fp32", "--out", str(out),
                 "--no-progress", "--device", "cpu", "--max-dets", "1", "10", "100"]) == 0  # explicit wins
    assert "AR@10" in json.loads(out.read_text())["bbox"]
