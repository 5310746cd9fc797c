"""Model-level behaviour: parameter counts, mmdet checkpoint loading, empty GT, API contracts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from swin_maskrcnn import ModelConfig, SwinMaskRCNN, load_model, tiny_model_config
from swin_maskrcnn.checkpoint.mmdet import CheckpointError

from conftest import SHARED_DATA

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}
STAT_KEYS = {"acc", "acc_fg", "rpn_num_pos", "rpn_num_neg", "roi_num_pos", "roi_num_neg"}


class OpaqueMeta:
    """An arbitrary pickled object: loading it would need weights_only=False."""


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant,expected", [("swin_t", 47_794_602), ("swin_s", 69_112_506)])
def test_parameter_counts_equal_mmdet(variant, expected):
    model = SwinMaskRCNN(ModelConfig(variant=variant, num_classes=80))
    assert n_params(model) == expected


def reference_swin_t_keys() -> dict[str, tuple[int, ...]]:
    """Appendix A of the reference (mmdet's Swin-T Mask R-CNN state_dict), when ../shared has it."""
    ref = SHARED_DATA.parent / "reference" / "mmdet_swin_mask_rcnn.md"
    if not ref.is_file():
        pytest.skip(f"{ref} not found")
    text = ref.read_text().split("## Appendix A", 1)[1].split("```", 2)[1]
    keys = {}
    for line in text.strip().splitlines():
        name, shape = line.split(" ", 1)
        keys[name] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return keys


def test_swin_t_state_dict_is_mmdet_layout():
    sd = SwinMaskRCNN(ModelConfig(variant="swin_t", num_classes=80)).state_dict()
    assert len(sd) == 231
    ref = reference_swin_t_keys()
    assert set(sd) == set(ref)
    for k, shape in ref.items():
        assert tuple(sd[k].shape) == shape, k


def _mmdet_style_checkpoint(tmp_path, cfg: ModelConfig, classes=None, name="ckpt.pth"):
    """A file in mmdet's exact layout: {'state_dict': OrderedDict, 'meta': {...}} with fresh weights."""
    torch.manual_seed(0)
    model = SwinMaskRCNN(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    meta = {"dataset_meta": {"classes": tuple(classes or [f"c{i}" for i in range(cfg.num_classes)])}, "epoch": 12}
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path, model


def test_load_swin_t_checkpoint_infers_variant_and_classes(tmp_path):
    path, ref = _mmdet_style_checkpoint(tmp_path, ModelConfig(variant="swin_t", num_classes=80))
    model = load_model(path)
    assert model.cfg.variant == "swin_t" and model.cfg.num_classes == 80
    assert len(model.class_names) == 80
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not model.training


def test_load_infers_swin_s_and_custom_widths(tmp_path):
    path, _ = _mmdet_style_checkpoint(tmp_path, ModelConfig(variant="swin_s", num_classes=3), name="s.pth")
    assert load_model(path).cfg.variant == "swin_s"
    tiny = tiny_model_config(num_classes=7)
    path, _ = _mmdet_style_checkpoint(tmp_path, tiny, name="tiny.pth")
    cfg = load_model(path).cfg
    assert cfg.variant == "custom" and cfg.num_classes == 7
    assert cfg.resolved_embed_dims() == 32 and list(cfg.resolved_depths()) == [1, 1, 1, 1]
    assert cfg.fpn_channels == tiny.fpn_channels and cfg.roi_fc_dims == tiny.roi_fc_dims


def test_mmdet_checkpoint_trains_with_mmdet_losses(tmp_path):
    # the library's loss defaults are the from-scratch preset; an mmdet checkpoint keeps mmdet's losses
    from swin_maskrcnn.modeling.config import LossConfig

    path, _ = _mmdet_style_checkpoint(tmp_path, tiny_model_config(num_classes=2), name="t.pth")
    lo = load_model(path).cfg.losses
    assert (lo.rpn_cls_pos_weight, lo.roi_cls_pos_weight, lo.clip_grad_norm) == (1.0, 1.0, None)
    assert lo == LossConfig.mmdet()
    # a dict override is applied on top of mmdet's losses, not on top of the preset
    lo = load_model(path, losses={"roi_cls_pos_weight": 2.0}).cfg.losses
    assert (lo.rpn_cls_pos_weight, lo.roi_cls_pos_weight, lo.clip_grad_norm) == (1.0, 2.0, None)
    explicit = LossConfig(rpn_cls_pos_weight=4.0)
    assert load_model(path, losses=explicit).cfg.losses == explicit


def test_unplaceable_or_missing_keys_are_errors_listing_them(tmp_path):
    cfg = tiny_model_config(num_classes=2)
    path, model = _mmdet_style_checkpoint(tmp_path, cfg)
    obj = torch.load(path, weights_only=True)
    sd = obj["state_dict"]
    sd["backbone.extra.weight"] = torch.zeros(1)
    del sd["neck.fpn_convs.0.conv.bias"]
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "backbone.extra.weight" in msg and "neck.fpn_convs.0.conv.bias" in msg and str(path) in msg


def test_checkpoint_needing_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": OpaqueMeta()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(path)


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")


def _scene(h=128, w=160, boxes=((10, 20, 60, 70), (80, 30, 150, 100)), labels=(0, 1)):
    img = torch.rand(3, h, w)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    return img, dict(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=masks,
    )


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return SwinMaskRCNN(tiny_model_config(num_classes=3))


def _losses_and_stats(model, images, targets):
    """The loss dict holds exactly the five losses (in graph); the statistics come apart, detached."""
    torch.manual_seed(5)
    losses, stats = model.losses_and_stats(images, targets)
    assert set(losses) == LOSS_KEYS and set(stats) == STAT_KEYS
    for k in LOSS_KEYS:
        assert torch.isfinite(losses[k]), k
        assert losses[k].requires_grad, k
    for k in STAT_KEYS:
        assert not stats[k].requires_grad, k
    torch.manual_seed(5)
    plain = model(images, targets)  # torchvision's convention: model(images, targets) is the loss dict
    assert set(plain) == LOSS_KEYS
    for k in LOSS_KEYS:
        assert torch.equal(plain[k], losses[k]), k
    return losses, stats


def test_empty_gt_alone_gives_finite_losses_in_graph(tiny_model):
    tiny_model.train()
    img, _ = _scene()
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), masks=torch.zeros(0, 128, 160))
    out, stats = _losses_and_stats(tiny_model, [img], [empty])
    assert out["loss_rpn_bbox"].item() == 0 and out["loss_bbox"].item() == 0 and out["loss_mask"].item() == 0
    assert stats["rpn_num_pos"].item() == 0 and stats["roi_num_pos"].item() == 0
    assert stats["rpn_num_neg"].item() == 256 and stats["roi_num_neg"].item() == 512
    tiny_model.zero_grad()
    sum(out.values()).backward()
    assert tiny_model.roi_head.mask_head.conv_logits.weight.grad is not None
    assert tiny_model.roi_head.bbox_head.fc_reg.weight.grad is not None


def test_empty_gt_mixed_in_batch(tiny_model):
    tiny_model.train()
    img0, t0 = _scene()
    img1, _ = _scene(h=96, w=128)
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), masks=torch.zeros(0, 96, 128))
    out, stats = _losses_and_stats(tiny_model, [img0, img1], [t0, empty])
    assert stats["roi_num_pos"].item() > 0 and out["loss_mask"].item() > 0
    sum(out.values()).backward()


def test_malformed_targets_get_clear_errors(tiny_model):
    tiny_model.train()
    img, t = _scene()
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        tiny_model([img], [dict(t, labels=torch.tensor([0, 3]))])
    with pytest.raises(ValueError, match="masks must be"):
        tiny_model([img], [dict(t, masks=t["masks"][:, :10])])
    with pytest.raises(ValueError, match="one target dict per image"):
        tiny_model([img])


def test_eval_outputs_and_predict_any_size(tiny_model):
    tiny_model.eval()
    cfg = tiny_model.cfg
    tiny_model.roi_head.cfg = cfg.roi.model_copy(update={"score_thr": 0.0, "max_per_img": 400})
    try:
        img, _ = _scene(h=100, w=140)
        (res,) = tiny_model([img])
        assert set(res) == {"boxes", "scores", "labels", "masks"}
        assert res["masks"].dtype == torch.bool and res["masks"].shape[1:] == (100, 140)
        assert 0 < res["boxes"].shape[0] <= 400
        (big,) = tiny_model([img], original_sizes=[(200, 280)])
        assert torch.allclose(big["boxes"], res["boxes"] * 2, atol=1e-3)
        assert big["masks"].shape[1:] == (200, 280)
        arr = (np.random.rand(90, 130, 3) * 255).astype(np.uint8)
        (p,) = tiny_model.predict([arr], resize=True, scale=(256, 192))
        assert p["masks"].shape[1:] == (90, 130)
        assert float(p["boxes"][:, 2].max()) <= 130 + 1e-3 and float(p["boxes"][:, 3].max()) <= 90 + 1e-3
    finally:
        tiny_model.roi_head.cfg = cfg.roi


def test_max_detections_allow_400():
    cfg = tiny_model_config(num_classes=2, roi={"max_per_img": 400})
    assert cfg.roi.max_per_img == 400
    with pytest.raises(ValueError):
        tiny_model_config(num_classes=2, roi={"max_per_img": 0})


def test_config_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match="rpn_cls_pos_wieght"):
        ModelConfig(losses={"rpn_cls_pos_wieght": 2.0})
    with pytest.raises(ValueError, match="num_classes"):
        ModelConfig(num_classes=0)


def test_model_metadata_is_declared_with_defaults_and_checked():
    from swin_maskrcnn import ModelMeta, Predictor

    cfg = tiny_model_config(num_classes=3)
    model = SwinMaskRCNN(cfg)
    assert model.class_names == ["0", "1", "2"] and model.label_to_cat_id is None
    # a model built in code writes results with ids label + 1 (COCO's start at 1)
    assert Predictor(model, device="cpu").label_to_cat_id == {0: 1, 1: 2, 2: 3}
    named = SwinMaskRCNN(cfg, meta=ModelMeta(["a", "b", "c"], {0: 7, 1: 3, 2: 9}))
    assert named.class_names == ["a", "b", "c"]
    assert Predictor(named, device="cpu").label_to_cat_id == {0: 7, 1: 3, 2: 9}
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        SwinMaskRCNN(cfg, meta=ModelMeta(["a", "b"]))
