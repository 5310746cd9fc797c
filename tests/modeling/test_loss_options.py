"""The loss options beyond mmdet's recipe: focal RPN / RoI classification, OHEM, learned loss weights.

Each is checked against a closed form at zero logits (p = 0.5: BCE = ln 2, focal factor 0.5^gamma,
alpha_t = alpha for positives and 1 - alpha for negatives) or an independent recomputation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from swin_maskrcnn import SwinMaskRCNN, tiny_model_config
from swin_maskrcnn.training.optim import build_param_groups
from swin_maskrcnn.modeling.sampler import even_choice

LN2 = math.log(2.0)


def g_has(group: dict, param: torch.Tensor) -> bool:
    return any(p is param for p in group["params"])


def scene(h=128, w=160):
    torch.manual_seed(3)
    img = torch.rand(3, h, w)
    boxes = torch.tensor([[10.0, 20, 60, 70], [80, 30, 150, 100]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 20:70, 10:60] = 1
    masks[1, 30:100, 80:150] = 1
    return img, dict(boxes=boxes, labels=torch.tensor([0, 2]), masks=masks)


def model_with(**losses):
    torch.manual_seed(0)
    m = SwinMaskRCNN(tiny_model_config(num_classes=3, losses=losses), sample_choice=even_choice)
    m.train()
    return m


def test_rpn_focal_closed_form_at_zero_logits():
    m = model_with(rpn_cls_loss="focal", rpn_cls_pos_weight=2.0, focal_alpha=0.25, focal_gamma=2.0)
    torch.nn.init.zeros_(m.rpn_head.rpn_cls.weight)
    torch.nn.init.zeros_(m.rpn_head.rpn_cls.bias)
    img, t = scene()
    out, stats = m.losses_and_stats([img], [t])
    npos, nneg = stats["rpn_num_pos"].item(), stats["rpn_num_neg"].item()
    assert npos > 0
    expected = (npos * 2.0 * 0.25 * 0.25 * LN2 + nneg * 0.75 * 0.25 * LN2) / (max(npos, 1) + max(nneg, 1))
    assert out["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_roi_sigmoid_focal_closed_form_and_scores():
    m = model_with(roi_cls_loss="sigmoid_focal", roi_cls_pos_weight=3.0)
    torch.nn.init.zeros_(m.roi_head.bbox_head.fc_cls.weight)
    torch.nn.init.zeros_(m.roi_head.bbox_head.fc_cls.bias)
    img, t = scene()
    out, stats = m.losses_and_stats([img], [t])
    npos, nneg, c = stats["roi_num_pos"].item(), stats["roi_num_neg"].item(), 3
    focal_pos, focal_neg = 0.25 * 0.25 * LN2, 0.75 * 0.25 * LN2
    expected = (npos * 3.0 * (focal_pos + (c - 1) * focal_neg) + nneg * c * focal_neg) / (npos + nneg)
    assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    # At test time the foreground columns are read as sigmoids.
    probs = m.roi_head.bbox_head.class_scores(torch.tensor([[0.0, 2.0, -1.0, 5.0]]))
    assert probs[0, :3].tolist() == pytest.approx(torch.sigmoid(torch.tensor([0.0, 2.0, -1.0])).tolist())


def test_ohem_picks_the_hardest_negatives():
    m = model_with(roi_sampler="ohem")
    img, t = scene()
    m.eval()
    with torch.no_grad():
        batch, _, _ = m.preprocess([img * 255])
        feats = m.neck(m.backbone(batch))[:4]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=g) * 100
    wh = torch.rand(600, 2, generator=g) * 50 + 4
    props = torch.cat([xy, xy + wh, torch.rand(600, 1, generator=g)], 1)
    boxes, samp = m.roi_head.sample(props, t["boxes"], t["labels"], feats, 0)
    # Independent hardness: CE of the box head on every candidate.
    cands, gt_inds, labels = m.roi_head.candidates(props, t["boxes"], t["labels"])
    rois = torch.cat([torch.zeros(len(cands), 1), cands], 1)
    with torch.no_grad():
        cls, _ = m.roi_head.bbox_head(m.roi_head.bbox_roi_extractor(feats, rois))
    ce = F.cross_entropy(cls, torch.where(labels >= 0, labels, torch.full_like(labels, 3)), reduction="none")
    neg_all = torch.nonzero(gt_inds == 0).flatten()
    assert samp.num_pos + samp.num_neg == 512 or samp.num_neg == neg_all.numel()
    if samp.num_neg < neg_all.numel():
        kth = ce[samp.neg_inds].min()
        unchosen = neg_all[~torch.isin(neg_all, samp.neg_inds)]
        assert ce[unchosen].max() <= kth + 1e-6
    # And training with OHEM runs end to end.
    m.train()
    out = m([img], [t])
    assert torch.isfinite(sum(out.values()))


def test_learned_loss_weights_formula_and_learning():
    m = model_with(learned_loss_weights=True)
    base = model_with()
    base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("learned_loss_weights")})
    img, t = scene()
    with torch.no_grad():
        m.learned_loss_weights.log_vars.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0, -1.0]))
    torch.manual_seed(7)
    out, stats = m.losses_and_stats([img], [t])
    torch.manual_seed(7)
    ref = base([img], [t])
    assert set(out) == set(ref)  # the learned weights are statistics, not losses
    for i, k in enumerate(("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")):
        s = m.learned_loss_weights.log_vars[i].item()
        assert out[k].item() == pytest.approx(math.exp(-s) * ref[k].item() + s, rel=1e-5, abs=1e-6)
        assert stats[f"weight_{k[5:]}"].item() == pytest.approx(math.exp(-s), rel=1e-6)
    # The weights learn and are never weight-decayed.
    sum(out.values()).backward()
    assert m.learned_loss_weights.log_vars.grad.abs().min() > 0
    groups = build_param_groups(m, 0.05, ["absolute_pos_embed", "relative_position_bias_table", "norm",
                                          "learned_loss_weights"])
    no_decay = next(g for g in groups if g["group_name"] == "no_decay")
    assert g_has(no_decay, m.learned_loss_weights.log_vars) and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("opts", [dict(rpn_cls_loss="focal", roi_cls_loss="sigmoid_focal"), dict(roi_sampler="ohem"), dict(learned_loss_weights=True)])
def test_options_handle_empty_gt(opts):
    m = model_with(**opts)
    img, _ = scene()
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), masks=torch.zeros(0, 128, 160))
    out = m([img], [empty])
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()
