"""The detector's stage contracts: one call per stage, losses apart from statistics, the mask size
and the test-time scale each owned by one config field.

Closed forms where possible: zero mask logits give a mask BCE of ln 2 at any mask size.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import swin_maskrcnn.modeling.detector as detector_module
from swin_maskrcnn import SwinMaskRCNN, tiny_model_config
from swin_maskrcnn.checkpoint.compat import upgrade_model_config
from swin_maskrcnn.modeling.config import ModelConfig
from swin_maskrcnn.modeling.sampler import even_choice
from swin_maskrcnn.training.config import ConfigError, config_from_dict

RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_bbox"}
ROI_LOSSES = {"loss_cls", "loss_bbox", "loss_mask"}


def scene(h: int = 128, w: int = 160):
    torch.manual_seed(3)
    img = torch.rand(3, h, w)
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 20:70, 10:60] = 1
    masks[1, 30:100, 80:150] = 1
    return img, dict(boxes=torch.tensor([[10.0, 20, 60, 70], [80, 30, 150, 100]]), labels=torch.tensor([0, 2]), masks=masks)


def tiny(**overrides) -> SwinMaskRCNN:
    torch.manual_seed(0)
    return SwinMaskRCNN(tiny_model_config(num_classes=3, **overrides), sample_choice=even_choice)


def features(model: SwinMaskRCNN, images):
    batch = model.preprocess([im * 255 for im in images])
    return batch, model.neck(model.backbone(batch.tensor))


def test_stages_in_training_return_losses_and_stats_and_no_detections():
    model = tiny().train()
    img, t = scene()
    batch, feats = features(model, [img])
    proposals, rpn_losses, rpn_stats = model.rpn_head(feats, batch.image_sizes, batch.pad_shapes, [t["boxes"]])
    assert len(proposals) == 1 and proposals[0].shape[1] == 5 and not proposals[0].requires_grad
    assert proposals[0].shape[0] <= model.cfg.rpn.max_per_img_train
    assert set(rpn_losses) == RPN_LOSSES and set(rpn_stats) == {"rpn_num_pos", "rpn_num_neg"}
    dets, roi_losses, roi_stats = model.roi_head(feats, proposals, batch.image_sizes, [t])
    assert dets == [] and set(roi_losses) == ROI_LOSSES
    assert set(roi_stats) == {"acc", "acc_fg", "roi_num_pos", "roi_num_neg"}
    with pytest.raises(ValueError, match="gt_boxes"):
        model.rpn_head(feats, batch.image_sizes, batch.pad_shapes)
    with pytest.raises(ValueError, match="target dict per image"):
        model.roi_head(feats, proposals, batch.image_sizes)


def test_stages_at_inference_return_detections_and_no_losses():
    model = tiny().eval()
    img, _ = scene(100, 140)
    with torch.no_grad():
        batch, feats = features(model, [img])
        proposals, rpn_losses, rpn_stats = model.rpn_head(feats, batch.image_sizes, batch.pad_shapes)
        assert proposals[0].shape[0] <= model.cfg.rpn.max_per_img_test
        dets, roi_losses, roi_stats = model.roi_head(feats, proposals, batch.image_sizes)
    assert rpn_losses == rpn_stats == roi_losses == roi_stats == {}
    (det,) = dets
    k = det["boxes"].shape[0]
    assert det["mask_probs"].shape == (k, 28, 28) and det["labels"].shape == (k,)
    # the detector is exactly these stages plus the postprocess step
    (ours,) = model.postprocess(dets, batch.image_sizes, [(200, 280)])
    (ref,) = model([img], original_sizes=[(200, 280)])
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(ours[key], ref[key]), key
    assert torch.allclose(ours["boxes"], det["boxes"] * 2)


def test_loss_dict_has_only_losses_and_learned_weights_are_stats():
    model = tiny(losses={"learned_loss_weights": True}).train()
    img, t = scene()
    losses, stats = model.losses_and_stats([img], [t])
    assert set(losses) == RPN_LOSSES | ROI_LOSSES
    assert {"weight_rpn_cls", "weight_rpn_bbox", "weight_cls", "weight_bbox", "weight_mask"} <= set(stats)
    assert all(not v.requires_grad for v in stats.values())


def test_learned_loss_weights_have_one_name_and_read_the_older_ones(tmp_path):
    from swin_maskrcnn.checkpoint.loader import load_checkpoint
    from swin_maskrcnn.checkpoint.native import save_checkpoint
    from swin_maskrcnn.modeling.config import LossConfig
    from swin_maskrcnn.training.config import OptimConfig

    assert LossConfig(dynamic_loss_weighting=True).learned_loss_weights  # the older config key
    assert "dynamic_loss_weighting" not in LossConfig().model_dump()
    assert OptimConfig(no_decay_keys=["norm", "loss_balancer"]).no_decay_keys == ["norm", "learned_loss_weights"]
    model = tiny(losses={"learned_loss_weights": True})
    with torch.no_grad():
        model.learned_loss_weights.log_vars.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0, -1.0]))
    path = save_checkpoint(tmp_path / "new.pt", model, model.cfg, ["a", "b", "c"], None)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"] = {k.replace("learned_loss_weights.", "loss_balancer."): v for k, v in obj["state_dict"].items()}
    torch.save(obj, tmp_path / "old.pt")  # as written before the rename
    loaded, _, _ = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded.learned_loss_weights.log_vars, model.learned_loss_weights.log_vars)


@pytest.mark.parametrize("mask_size", [20, 28])
def test_mask_size_drives_the_mask_branch(mask_size):
    model = tiny(roi={"mask_size": mask_size}).train()
    with torch.no_grad():  # zero mask logits: BCE = ln 2 per pixel at any mask size
        model.roi_head.mask_head.conv_logits.weight.zero_()
        model.roi_head.mask_head.conv_logits.bias.zero_()
    img, t = scene()
    losses, stats = model.losses_and_stats([img], [t])
    assert stats["roi_num_pos"].item() > 0
    assert losses["loss_mask"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    _, feats = features(model, [img])
    rois = torch.tensor([[0.0, 10.0, 20.0, 60.0, 70.0]])
    assert model.roi_head.mask_head(model.roi_head.mask_roi_extractor(feats[:4], rois)).shape[-2:] == (mask_size, mask_size)
    model.eval()
    with torch.no_grad():
        batch, feats = features(model, [img])
        proposals, _, _ = model.rpn_head(feats, batch.image_sizes, batch.pad_shapes)
        (det,), _, _ = model.roi_head(feats, proposals, batch.image_sizes)
    assert det["mask_probs"].shape[1:] == (mask_size, mask_size)
    (res,) = model([img])
    assert res["masks"].shape[1:] == (128, 160)


def test_odd_mask_size_is_refused_with_the_reason():
    with pytest.raises(ValidationError, match="mask_size must be even"):
        tiny_model_config(roi={"mask_size": 27})


def test_predict_resizes_to_the_models_test_scale(monkeypatch):
    seen = []
    real = detector_module.resize_keep_ratio

    def recording(image_255, scale):
        seen.append(tuple(scale))
        return real(image_255, scale)

    monkeypatch.setattr(detector_module, "resize_keep_ratio", recording)
    assert ModelConfig().test_scale == (1333, 800)  # mmdet's test resize
    model = tiny(test_scale=(96, 64)).eval()
    arr = (np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8)
    (res,) = model.predict([arr])
    assert seen == [(96, 64)] and res["masks"].shape[1:] == (90, 130)
    model.predict([arr], scale=(128, 128))
    assert seen[-1] == (128, 128)
    native = tiny(test_scale=None).eval()
    seen.clear()
    (a,) = native.predict([arr])
    (b,) = native.predict([arr], resize=False)
    assert seen == [] and torch.equal(a["boxes"], b["boxes"])


def _train_dict(**data):
    return {"model": tiny_model_config(num_classes=2).model_dump(mode="json"),
            "data": dict(train_ann="a.json", train_images="imgs", **data)}


def test_training_config_takes_the_test_scale_from_the_model():
    raw = _train_dict()
    raw["model"]["test_scale"] = [256, 192]
    assert config_from_dict(raw).model.test_scale == (256, 192)
    # older configs name data.test_scale: read as model.test_scale
    old = _train_dict(test_scale=[320, 200])
    del old["model"]["test_scale"]
    cfg = config_from_dict(old)
    assert cfg.model.test_scale == (320, 200) and "test_scale" not in cfg.data.model_dump()
    clash = _train_dict(test_scale=[320, 200])
    clash["model"]["test_scale"] = [256, 192]
    with pytest.raises(ConfigError, match="model.test_scale"):
        config_from_dict(clash)


def test_old_checkpoints_carry_their_test_scale_into_the_model_config():
    model_cfg = tiny_model_config(num_classes=2).model_dump(mode="json")
    del model_cfg["test_scale"]
    meta = {"model_config": model_cfg, "train_config": {"data": {"test_scale": [160, 96]}}}
    assert ModelConfig.model_validate(upgrade_model_config(meta["model_config"], meta["train_config"])).test_scale == (160, 96)
    meta["train_config"]["data"]["test_scale"] = None  # native size
    assert ModelConfig.model_validate(upgrade_model_config(meta["model_config"], meta["train_config"])).test_scale is None
    new = {"model_config": tiny_model_config(num_classes=2, test_scale=(64, 64)).model_dump(mode="json"),
           "train_config": None}
    assert ModelConfig.model_validate(upgrade_model_config(new["model_config"], new["train_config"])).test_scale == (64, 64)
