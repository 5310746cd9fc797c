"""Ignore regions against mmdet 3.3 itself (fixture ``tests/fixtures/mmdet_tiny_seed11_ignore``).

Made by ``benchmarks/make_ignore_fixture.py`` (mmdet's own model code through the mmdet_reference
tool): the seed 11 tiny model and images, two ignore boxes per image given to mmdet as
``ignored_instances``, ``train_cfg.{rpn,rcnn}.assigner.ignore_iof_thr=0.5``, deterministic training
mode (no DropPath, evenly spaced sampler). Also mmdet's ``MaxIoUAssigner`` on 12 random cases
(RPN and R-CNN settings, thresholds 0.5 / 0.3 / 0.8 / -1).
"""
from __future__ import annotations

import pytest
import torch

from swin_maskrcnn import SwinMaskRCNN, load_model
from swin_maskrcnn.modeling.assigner import MaxIoUAssigner
from swin_maskrcnn.modeling.sampler import even_choice

from conftest import FIXTURES

FX = FIXTURES / "mmdet_tiny_seed11_ignore"


@pytest.fixture(scope="module")
def fx():
    rec = torch.load(FX / "train_ignore.pt", weights_only=True)
    base = load_model(FX / "checkpoint.pth")
    cfg = base.cfg
    thr = rec["ignore_iof_thr"]
    cfg = cfg.model_copy(update={
        "drop_path_rate": 0.0,
        "rpn": cfg.rpn.model_copy(update={"ignore_iof_thr": thr}),
        "roi": cfg.roi.model_copy(update={"ignore_iof_thr": thr}),
    })
    m = SwinMaskRCNN(cfg, sample_choice=even_choice)
    m.load_state_dict(base.state_dict())
    m.train()
    tr = rec["train"]
    targets = [dict(boxes=g["bboxes"], labels=g["labels"], masks=g["masks"].to(torch.uint8), ignore_boxes=ig)
               for g, ig in zip(tr["gt_instances"], rec["ignore_boxes"])]
    images = [im.permute(2, 0, 1).float() / 255.0 for im in rec["images"]]
    return m, rec, targets, images


def test_assigner_equals_mmdet_on_random_cases():
    rec = torch.load(FX / "train_ignore.pt", weights_only=True)
    n_ignored = 0
    for c in rec["assigner_cases"]:
        a = MaxIoUAssigner(c["pos_iou_thr"], c["neg_iou_thr"], c["min_pos_iou"], ignore_iof_thr=c["ignore_iof_thr"])
        r = a.assign(c["candidates"], c["gt"], c["labels"], c["ignore"])
        assert r.gt_inds.tolist() == c["gt_inds"].tolist()
        torch.testing.assert_close(r.max_overlaps, c["max_overlaps"], rtol=0, atol=1e-6)
        n_ignored += int((c["max_overlaps"] == -1).sum())
    assert n_ignored > 100  # the cases do exercise the ignore rule


def test_rpn_samples_equal_mmdet(fx):
    m, rec, targets, images = fx
    batch, sizes, pads = m.preprocess([im * 255.0 for im in images])
    with torch.no_grad():
        feats = m.neck(m.backbone(batch))
    anchors = torch.cat(m.rpn_head.anchors(feats))
    fsizes = [f.shape[-2:] for f in feats]
    rpn = [s for s in rec["train"]["sampling"] if s["stage"] == "rpn"]
    ignored_total = 0
    for s in rpn:
        i = s["img"]
        valid = torch.cat(m.rpn_head.anchor_generator.valid_flags(fsizes, pads[i], anchors.device))
        va = anchors[valid]
        assert va.shape[0] == s["num_priors"]
        gt = targets[i]["boxes"]
        assign = m.rpn_head.assigner.assign(va, gt, torch.zeros(gt.shape[0], dtype=torch.long), targets[i]["ignore_boxes"])
        ignored_total += int((assign.max_overlaps == -1).sum())
        samp = m.rpn_head.sampler.sample(assign.gt_inds, assign.labels)
        assert samp.pos_inds.tolist() == s["pos_inds"].tolist()
        assert samp.neg_inds.tolist() == s["neg_inds"].tolist()
        assert samp.pos_assigned_gt_inds.tolist() == s["pos_assigned_gt_inds"].tolist()
    assert ignored_total > 0


def test_rcnn_samples_on_mmdet_proposals_equal_mmdet(fx):
    m, rec, targets, _ = fx
    tr = rec["train"]
    for s in tr["sampling"]:
        if s["stage"] != "rcnn":
            continue
        i = s["img"]
        prop = torch.cat([tr["rpn_proposals"][i]["bboxes"], tr["rpn_proposals"][i]["scores"][:, None]], 1)
        cands, samp = m.roi_head.sample(prop, targets[i]["boxes"], targets[i]["labels"],
                                        ignore_boxes=targets[i]["ignore_boxes"])
        assert cands.shape[0] == s["num_priors"]
        assert samp.pos_inds.tolist() == s["pos_inds"].tolist()
        assert samp.neg_inds.tolist() == s["neg_inds"].tolist()
        assert samp.pos_assigned_gt_inds.tolist() == s["pos_assigned_gt_inds"].tolist()
        # the GT boxes (first candidates) stay positives although GT 0 lies inside an ignore region
        assert set(range(targets[i]["boxes"].shape[0])) <= set(samp.pos_inds.tolist())


def test_training_losses_equal_mmdet(fx):
    m, rec, targets, images = fx
    losses, stats = m.losses_and_stats(images, targets)
    ref = rec["train"]["losses"]
    rpn = [s for s in rec["train"]["sampling"] if s["stage"] == "rpn"]
    assert stats["rpn_num_pos"].item() == sum(len(s["pos_inds"]) for s in rpn)
    assert stats["rpn_num_neg"].item() == sum(len(s["neg_inds"]) for s in rpn)
    for key in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"):
        assert abs(losses[key].item() - ref[key]) <= 1e-4 * max(1.0, abs(ref[key])), key
    # without the ignore regions the losses are others (the fixture does test the feature)
    plain = [{k: v for k, v in t.items() if k != "ignore_boxes"} for t in targets]
    losses0, _ = m.losses_and_stats(images, plain)
    assert abs(losses0["loss_rpn_cls"].item() - ref["loss_rpn_cls"]) > 1e-3
