"""``model.rpn.auto_anchors``: anchors fitted to the training boxes before the first step.

The fit is :func:`swin_maskrcnn.diagnostics.anchor_fit.fit_anchors` on the training split (every
training box after the training resize, the model's own anchor generator), the same one that
``swin-maskrcnn inspect`` reports. The suggested ``anchor_scales`` / ``anchor_ratios`` have as many
anchors per location as the configured ones, so the RPN head keeps its shape. They replace the
configured values in the run's config, so the resolved ``config.yaml``, every Lightning checkpoint and
``model_final.pt`` carry them, and ``predict`` / ``evaluate`` / ``load_model`` build the model with them.
A resumed run takes the anchors its checkpoint was trained with (no refit: the weights belong to them).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..checkpoint.loader import read_checkpoint
from .config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["apply_auto_anchors"]


def apply_auto_anchors(cfg: TrainConfig, train_dataset: Any, resume: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """Set ``cfg.model.rpn.anchor_scales`` / ``anchor_ratios`` to the fitted values when
    ``cfg.model.rpn.auto_anchors`` is on (``cfg`` is changed in place). Returns the fit's
    ``report.json``-style summary (``current``, ``suggested``), or None when off or resuming."""
    rpn = cfg.model.rpn
    if not rpn.auto_anchors:
        return None
    if resume is not None:
        _, meta = read_checkpoint(resume)
        saved = ((meta.get("model_config") or {}).get("rpn") or {})
        if "anchor_scales" in saved and "anchor_ratios" in saved:
            rpn.anchor_scales = [float(v) for v in saved["anchor_scales"]]
            rpn.anchor_ratios = [float(v) for v in saved["anchor_ratios"]]
            log.info("auto_anchors: resuming with the checkpoint's anchors scales %s ratios %s",
                     rpn.anchor_scales, rpn.anchor_ratios)
        return None
    from ..diagnostics.anchor_fit import fit_anchors

    fit = fit_anchors(train_dataset, cfg.model, data_cfg=cfg.data)
    cur, sug = fit.current, fit.suggested
    if fit.changed:
        log.info("auto_anchors: anchor_scales %s -> %s, anchor_ratios %s -> %s: bpr (best anchor IoU >= %.2f) "
                 "%.3f -> %.3f, bpr_min_pos (>= %.2f) %.3f -> %.3f, boxes without a positive anchor %d -> %d "
                 "(%d training boxes at %s, %.1f s)", cur.anchor_scales, sug.anchor_scales, cur.anchor_ratios,
                 sug.anchor_ratios, fit.pos_iou_thr, cur.bpr, sug.bpr, fit.min_pos_iou, cur.bpr_min_pos,
                 sug.bpr_min_pos, cur.unmatched, sug.unmatched, fit.num_boxes, fit.boxes.scale_note, fit.seconds)
    else:
        log.info("auto_anchors: the configured anchors (scales %s, ratios %s) already fit best: bpr %.3f, "
                 "bpr_min_pos %.3f (%d training boxes)", cur.anchor_scales, cur.anchor_ratios, cur.bpr,
                 cur.bpr_min_pos, fit.num_boxes)
    rpn.anchor_scales = list(sug.anchor_scales)
    rpn.anchor_ratios = list(sug.anchor_ratios)
    d = fit.as_dict()
    return {k: d[k] for k in ("pos_iou_thr", "min_pos_iou", "current", "suggested", "scale", "num_boxes")}
