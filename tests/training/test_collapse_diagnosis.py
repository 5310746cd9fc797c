"""The collapse diagnosis names the cause first, on runs made to collapse on purpose (tiny model, a
few steps): anchors that fit no box, a learning rate that diverges, a classification weight near
zero; and the anchor fit itself against a count by hand."""
from __future__ import annotations

from swin_maskrcnn.diagnostics.collapse import AnchorFit, CollapseEvidence, diagnose
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.training.config import config_from_dict

from conftest import make_tiny_coco, tiny_train_config


def test_anchor_evidence_from_the_fit(tmp_path):
    """The share comes from inspect's fit_anchors: the boxes below rpn.pos_iou_thr, and its suggestion."""
    from swin_maskrcnn.data.coco import CocoInstanceDataset
    from swin_maskrcnn.diagnostics.anchor_fit import fit_anchors

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=4)
    ds = CocoInstanceDataset(ann, imgs)
    cfg = tiny_model_config(num_classes=2, rpn=dict(anchor_scales=[64.0]), test_scale=(128, 128))
    raw = fit_anchors(ds, cfg)
    fit = AnchorFit.from_fit(raw)
    assert fit.total == raw.num_boxes > 0
    assert fit.unmatched == round((1 - raw.current.bpr) * fit.total) == fit.total  # 256 px anchors, 24-56 px boxes
    assert fit.suggestion == raw.override_line() and fit.suggested_unmatched < fit.unmatched


def _run(tmp_path, name, model_over=None, optim_over=None):
    from swin_maskrcnn.training.train import train

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=4)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", name, max_steps=6, val_every_n_steps=6,
                            checkpoint_every_n_steps=100, probe_every_n_steps=3)
    raw = cfg.model_dump(mode="json")
    for k, v in (model_over or {}).items():
        raw["model"][k] = {**raw["model"][k], **v} if isinstance(v, dict) else v
    raw["optim"].update(optim_over or {})
    raw["model"]["losses"]["clip_grad_norm"] = None
    raw["runtime"]["max_consecutive_nonfinite"] = 1000
    summary = train(config_from_dict(raw))
    assert "collapse_diagnosis" in summary, summary["final_metrics"]
    return summary["collapse_diagnosis"]


def test_anchors_that_fit_nothing(tmp_path):
    lines = _run(tmp_path, "anchors", {"rpn": {"anchor_scales": [64.0]}})
    assert "have no anchor >= 0.7" in lines[0] and "set model.rpn.anchor_scales=[" in lines[0], lines
    assert "model.rpn.auto_anchors=true" in lines[0]


def test_learning_rate_that_diverges(tmp_path):
    lines = _run(tmp_path, "lr", optim_over={"lr": 10.0, "warmup_iters": 1})
    assert "training diverges" in lines[0] and "lower optim.lr" in lines[0], lines


def test_classification_weight_near_zero(tmp_path):
    lines = _run(tmp_path, "cls", {"losses": {"roi_loss_cls_weight": 1e-6}})
    assert lines[0].startswith("1. loss_cls is") and "model.losses.roi_loss_cls_weight=1.0" in lines[0], lines


def test_diagnose_ranks_by_hand_made_evidence():
    cfg = tiny_model_config(num_classes=2)
    ev = CollapseEvidence(window=4, images_per_step=2)
    for loss in (2.0, 1.8, 1.6, 1.5, 1.4):
        ev.record({"train/loss": loss, "train/roi_num_pos": 16.0, "train/roi_num_neg": 48.0, "train/acc_fg": 0.0,
                   "train/rpn_num_pos": 20.0, "train/share_loss_cls": 0.3})
    (first, *_) = diagnose(ev, cfg)
    assert first.key == "model.losses.roi_cls_pos_weight"
    assert first.text == ("foreground accuracy 0 % with 25 % positives: raise model.losses.roi_cls_pos_weight "
                          f"(now {cfg.losses.roi_cls_pos_weight:g})")
