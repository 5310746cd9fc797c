"""Why ``loss_cls`` on the full Swin-T fixture is ~1e-3 (relative) off mmdet's: near-tied proposals swap.

Finding (fixture ``make_fixture.py --model swin_t --seed 13``, kept out of git; commands in
``benchmarks/mmdet_proposal_order.py``): our training losses equal mmdet's for the RPN, box and mask
terms and the accuracy, but ``loss_cls`` is 0.248397 vs mmdet's 0.2481686 (+9.2e-4). Our RPN logits
are within 8.5e-6 of mmdet's; in image 1 that swaps two pairs of proposals whose mmdet scores differ
by 2e-7 (rows 635/636: 0.9484019 / 0.9484017; rows 868/869: 0.9346926 / 0.9346924). The sampler
draws by position (mmdet's ``RandomSampler``, here its evenly spaced stand-in), so the same sampled
indices pick two other negatives. mmdet itself, run on its own boxes in our order, gives
0.2483965: our number. Swapping only 635/636 gives 0.2485030, only 868/869 0.2480622: mmdet's own
result moves by 1e-3 under a reordering of proposals that tie to float32 rounding.

Pinned here, on the committed tiny fixtures and the opt-in Swin-T one (SWIN_MASKRCNN_SWIN_T_FIXTURE):
1. on mmdet's own training proposals our RoI stage samples mmdet's indices and gives its
   ``loss_cls``, ``loss_bbox``, ``loss_mask`` and accuracy (relative 1e-5);
2. where our own training proposals differ from mmdet's, they differ at near-ties: a proposal
   of one side only sits at NMS's IoU threshold (within 1e-4), at the score cut, or was pushed past
   the cut by one of those; the shared proposals come in mmdet's order except for swaps of scores
   within 1e-5. mmdet's proposals put in our order give our own-proposal losses: the whole
   difference is the order (on the tiny seed 11 fixture one proposal has IoU 0.69999993 with a
   higher-scored one: NMS at 0.7 keeps it here, not in mmdet, and mmdet's last row falls off);
3. the sampler is positional: swapping two adjacent proposals, one sampled and one not, changes
   ``loss_cls`` and leaves ``loss_bbox`` and ``loss_mask`` as they were.
"""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from swin_maskrcnn import SwinMaskRCNN
from swin_maskrcnn.modeling.sampler import even_choice

from test_mmdet_parity import _input_255, fixture_params, load_fixture

REL = 1e-5
ROI_KEYS = ("loss_cls", "loss_bbox", "loss_mask")


@pytest.fixture(scope="module", params=fixture_params())
def setup(request):
    """Deterministic model (no DropPath, evenly spaced sampler), FPN maps, targets and mmdet's record."""
    model, out = load_fixture(request.param)
    m = SwinMaskRCNN(model.cfg.model_copy(update={"drop_path_rate": 0.0}), sample_choice=even_choice)
    m.load_state_dict(model.state_dict())
    m.train()
    tr = out["train"]
    targets = [dict(boxes=g["bboxes"], labels=g["labels"], masks=g["masks"].to(torch.uint8)) for g in tr["gt_instances"]]
    batch, shapes, _ = m.preprocess(_input_255(out))
    with torch.no_grad():
        feats = m.neck(m.backbone(batch))
    mmdet_props = [torch.cat([p["bboxes"], p["scores"][:, None]], 1) for p in tr["rpn_proposals"]]
    return m, out, feats, shapes, targets, mmdet_props


def _roi(m, feats, proposals, targets) -> dict[str, float]:
    with torch.no_grad():
        losses, stats = m.roi_head.loss(feats[:4], proposals, targets)
    return {**{k: losses[k].item() for k in ROI_KEYS}, "acc": stats["acc"].item()}


def _our_training_proposals(m, feats, shapes) -> list[torch.Tensor]:
    rpn = m.rpn_head
    with torch.no_grad():
        cls, reg = rpn.maps(feats)
        return rpn.proposals(cls, reg, rpn.anchors(feats), shapes, training=True)


def _close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-3)


def test_on_mmdet_proposals_sampling_and_roi_losses_equal_mmdet(setup):
    m, out, feats, _, targets, mmdet_props = setup
    tr = out["train"]
    for s in (s for s in tr["sampling"] if s["stage"] == "rcnn"):
        i = s["img"]
        cands, samp = m.roi_head.sample(mmdet_props[i], targets[i]["boxes"], targets[i]["labels"])
        assert cands.shape[0] == s["num_priors"]
        assert samp.pos_inds.tolist() == s["pos_inds"].tolist()
        assert samp.neg_inds.tolist() == s["neg_inds"].tolist()
        assert samp.pos_assigned_gt_inds.tolist() == s["pos_assigned_gt_inds"].tolist()
    got = _roi(m, feats, mmdet_props, targets)
    for k in ROI_KEYS:
        assert _close(got[k], tr["losses"][k]), (k, got[k], tr["losses"][k])
    assert abs(got["acc"] - tr["losses"]["acc"]) < 1e-3


def _borderline(row: int, props: torch.Tensor, others: torch.Tensor, nms_iou: float, pushed: int) -> bool:
    """A proposal on one side only sits at a tie: NMS's IoU threshold against a higher-scored
    proposal of the other side, the score cut at the other side's last row, or it is one of the
    last ``pushed`` rows, pushed past the cut by as many proposals that only the other side kept."""
    box, score = props[row], props[row, 4].item()
    higher = others[others[:, 4] > score]
    near_nms = higher.numel() > 0 and abs(box_iou(box[None, :4], higher[:, :4]).max().item() - nms_iou) < 1e-4
    return near_nms or abs(score - others[-1, 4].item()) < 1e-5 or row >= props.shape[0] - pushed


def test_our_proposals_differ_from_mmdets_only_at_near_ties(setup):
    m, out, feats, shapes, targets, mmdet_props = setup
    ours = _our_training_proposals(m, feats, shapes)
    nms_iou = m.cfg.rpn.nms_iou
    reordered = []
    for o, r in zip(ours, mmdet_props):
        assert o.shape == r.shape
        dist = (o[:, None, :4] - r[None, :, :4]).abs().amax(-1)  # every box of ours vs every box of mmdet's
        # one-to-one: each of ours takes the nearest unused row of mmdet's (levels may repeat a box)
        match = torch.full((o.shape[0],), -1, dtype=torch.long)
        used = torch.zeros(r.shape[0], dtype=torch.bool)
        for j in range(o.shape[0]):
            k = int(dist[j].masked_fill(used, float("inf")).argmin())
            if dist[j, k] < 1e-2:
                match[j], used[k] = k, True
        found = match >= 0
        ours_only = (~found).nonzero().flatten().tolist()
        mmdet_only = (~used).nonzero().flatten().tolist()
        for j in ours_only:
            assert _borderline(j, o, r, nms_iou, len(mmdet_only)), ("ours only", j, o[j])
        for j in mmdet_only:
            assert _borderline(j, r, o, nms_iou, len(ours_only)), ("mmdet's only", j, r[j])
        # our order of the shared proposals is mmdet's except where two swap: their mmdet scores tie
        seq = match[found]
        inverted = (seq[1:] < seq[:-1]).nonzero().flatten()
        assert ((r[seq[inverted], 4] - r[seq[inverted + 1], 4]).abs() < 1e-5).all(), seq[inverted].tolist()
        # mmdet's own boxes and scores in our order (ours where a tie left a proposal on our side only)
        reordered.append(torch.where(found[:, None], r[match.clamp(min=0)], o))
    own = _roi(m, feats, ours, targets)
    from_reordered = _roi(m, feats, reordered, targets)
    for k in (*ROI_KEYS, "acc"):  # the order accounts for the whole difference to mmdet
        assert _close(own[k], from_reordered[k]), (k, own[k], from_reordered[k])


def test_the_sampler_picks_by_position(setup):
    m, out, feats, _, targets, mmdet_props = setup
    s = next(s for s in out["train"]["sampling"] if s["stage"] == "rcnn" and s["img"] == 0)
    g = targets[0]["boxes"].shape[0]  # the GT boxes come first among the candidates
    sampled = set(s["neg_inds"].tolist())
    pos = set(s["pos_inds"].tolist())
    # two adjacent proposals, neither positive, exactly one of them sampled as a negative
    j = next(j for j in range(mmdet_props[0].shape[0] - 1)
             if not {g + j, g + j + 1} & pos and ((g + j) in sampled) != ((g + j + 1) in sampled))
    swapped = [p.clone() for p in mmdet_props]
    swapped[0][[j, j + 1]] = swapped[0][[j + 1, j]]
    base = _roi(m, feats, mmdet_props, targets)
    moved = _roi(m, feats, swapped, targets)
    assert not _close(moved["loss_cls"], base["loss_cls"], 1e-7), (j, moved, base)
    assert moved["loss_bbox"] == base["loss_bbox"] and moved["loss_mask"] == base["loss_mask"]
