"""Why a training run collapsed, with numbers, and which config key to change.

:class:`CollapseEvidence` collects, during training, the figures that tell collapses apart: RPN
positives sampled per image, the RoI foreground fraction and foreground accuracy, each loss's share
of the total, the training loss at the start and now, the non-finite steps skipped, the probe
batch's predictions above the score threshold and, computed once at the start by
:func:`anchor_fit`, the share of ground-truth boxes that no anchor overlaps at
``rpn.pos_iou_thr``. :func:`diagnose` turns them into findings ranked by how surely each explains a
collapse, each naming the key to change. ``ProbeMonitor`` adds them to the collapse alarm, and the
run summary carries them when the final validation AP is about zero.

The share of unmatched boxes is ``inspect``'s anchor fit
(:func:`~swin_maskrcnn.diagnostics.anchor_fit.fit_anchors`: the training resize, the model's anchor
generator, ``box_iou``'s arithmetic), with its suggested anchors for the advice.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence


__all__ = ["AnchorFit", "CollapseEvidence", "Finding", "diagnose", "format_findings"]

@dataclass
class AnchorFit:
    """Boxes whose best anchor IoU is below ``pos_iou_thr`` (``unmatched`` of ``total``) with the
    current ``scales``, and the suggested anchors (``suggestion``, the override line, and the boxes
    they leave unmatched)."""

    unmatched: int
    total: int
    pos_iou_thr: float
    scales: list[float]
    suggestion: Optional[str] = None
    suggested_unmatched: Optional[int] = None

    @property
    def share(self) -> float:
        return self.unmatched / self.total if self.total else 0.0

    @classmethod
    def from_fit(cls, fit: Any) -> "AnchorFit":
        """From :func:`~swin_maskrcnn.diagnostics.anchor_fit.fit_anchors`' result."""
        n = fit.num_boxes
        below = lambda st: int((st.best_iou < fit.pos_iou_thr).sum())  # noqa: E731
        return cls(below(fit.current), n, float(fit.pos_iou_thr), [float(v) for v in fit.current.anchor_scales],
                   fit.override_line() if fit.changed else None, below(fit.suggested) if fit.changed else None)


@dataclass
class Finding:
    """One possible cause: ``rank`` (higher = more surely the cause), the ``key`` to change, ``text``."""

    rank: float
    cause: str
    key: str
    text: str


def _mean(values: Iterable[float]) -> Optional[float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else None


@dataclass
class CollapseEvidence:
    """Training figures for :func:`diagnose`; :meth:`record` takes one step's ``train/*`` metrics."""

    window: int = 50
    anchor: Optional[AnchorFit] = None
    images_per_step: int = 1
    first_losses: list[float] = field(default_factory=list)
    recent: deque = field(default_factory=deque)
    nonfinite_steps: int = 0
    probe_preds_per_image: Optional[float] = None

    def record(self, metrics: dict[str, float]) -> None:
        loss = metrics.get("train/loss")
        if loss is None or not math.isfinite(loss):
            self.nonfinite_steps += 1
            return
        if len(self.first_losses) < self.window:
            self.first_losses.append(float(loss))
        self.recent.append(dict(metrics))
        while len(self.recent) > self.window:
            self.recent.popleft()

    def figures(self) -> dict[str, Any]:
        """The numbers :func:`diagnose` reads (None where not measured)."""
        r = list(self.recent)
        pos = _mean(m.get("train/roi_num_pos") for m in r)
        neg = _mean(m.get("train/roi_num_neg") for m in r)
        shares = {}
        for k in sorted({k for m in r for k in m if k.startswith("train/share_")}):
            shares[k[len("train/share_"):]] = _mean(m.get(k) for m in r)
        rpn_pos = _mean(m.get("train/rpn_num_pos") for m in r)
        return {
            "steps_seen": len(self.first_losses) if len(self.first_losses) < self.window else None,
            "loss_start": self.first_losses[0] if self.first_losses else None,  # the first finite step
            "loss_recent": _mean(m.get("train/loss") for m in r[-10:]),
            "nonfinite_steps": self.nonfinite_steps,
            "rpn_pos_per_image": None if rpn_pos is None else rpn_pos / max(1, self.images_per_step),
            "roi_fg_fraction": None if pos is None or neg is None or pos + neg == 0 else pos / (pos + neg),
            "roi_fg_acc": _mean(m.get("train/acc_fg") for m in r),
            "loss_shares": shares,
            "probe_preds_per_image": self.probe_preds_per_image,
            "anchor_unmatched": None if self.anchor is None else [self.anchor.unmatched, self.anchor.total],
        }


def diagnose(ev: CollapseEvidence, model_cfg: Any, lr: Optional[float] = None) -> list[Finding]:
    """Findings, most likely cause first (always at least one)."""
    f = ev.figures()
    out: list[Finding] = []
    losses = model_cfg.losses
    # a loss term switched (almost) off: the head it trains cannot learn, whatever else happens
    for name, key in (("loss_cls", "roi_loss_cls_weight"), ("loss_rpn_cls", "rpn_loss_cls_weight")):
        w = float(getattr(losses, key))
        share = f["loss_shares"].get(name)
        if w < 0.05:  # a tiny share with a normal weight is a symptom (another loss grew), not a cause
            s = "n/a" if share is None else f"{100 * share:.2f} %"
            out.append(Finding(300 - 100 * w, "classification weight", f"model.losses.{key}",
                               f"{name} is {s} of the loss (model.losses.{key}={w:g}): that classifier barely "
                               f"trains; set model.losses.{key}=1.0"))
    # divergence: non-finite steps or a loss that grew
    start, now = f["loss_start"], f["loss_recent"]
    grew = start is not None and now is not None and now > 2.0 * start
    if f["nonfinite_steps"] or grew or (now is not None and now > 1e3):
        lr_s = "" if lr is None else f" with optim.lr={lr:g}"
        what = []
        if f["nonfinite_steps"]:
            what.append(f"{f['nonfinite_steps']} steps had a non-finite loss")
        if start is not None and now is not None:
            what.append(f"the loss went from {start:.3g} to {now:.3g}")
        out.append(Finding(200 + min(50.0, f["nonfinite_steps"]), "learning rate diverges", "optim.lr",
                           "training diverges (" + ", ".join(what) + f"){lr_s}: lower optim.lr"
                           + ("" if lr is None else f" (e.g. optim.lr={lr / 10:g})")
                           + " or set model.losses.clip_grad_norm"))
    # anchors that fit no box: the RPN never samples positives for them
    if ev.anchor is not None and ev.anchor.total:
        a = ev.anchor
        if a.share >= 0.25:
            better = ""
            if a.suggestion and a.suggested_unmatched is not None and a.suggested_unmatched < a.unmatched:
                better = f": set {a.suggestion} ({a.suggested_unmatched} of {a.total} unmatched then)"
            better += " or model.rpn.auto_anchors=true"
            rpn = f["rpn_pos_per_image"]
            pos = "" if rpn is None else f"; the RPN samples {rpn:.1f} positives per image"
            out.append(Finding(100 * a.share + 50, "anchors fit no box", "model.rpn.anchor_scales",
                               f"{a.unmatched} of {a.total} boxes have no anchor >= {a.pos_iou_thr:g} "
                               f"(model.rpn.anchor_scales={a.scales}){pos}{better}"))
    acc, frac = f["roi_fg_acc"], f["roi_fg_fraction"]
    if acc is not None and frac is not None and frac > 0 and acc < 5.0:
        out.append(Finding(90, "foreground never predicted", "model.losses.roi_cls_pos_weight",
                           f"foreground accuracy {acc:.0f} % with {100 * frac:.0f} % positives: raise "
                           f"model.losses.roi_cls_pos_weight (now {losses.roi_cls_pos_weight:g})"))
    rpn = f["rpn_pos_per_image"]
    if rpn is not None and rpn < 1.0 and not any(x.cause == "anchors fit no box" for x in out):
        out.append(Finding(80, "no RPN positives", "model.rpn.pos_iou_thr",
                           f"the RPN samples {rpn:.2f} positives per image: check that boxes match the images, or "
                           f"lower model.rpn.pos_iou_thr (now {model_cfg.rpn.pos_iou_thr:g})"))
    ppi = f["probe_preds_per_image"]
    if ppi is not None and ppi <= 0.1:
        out.append(Finding(20, "no confident predictions", "model.roi.score_thr",
                           f"the probe batch has {ppi:.2f} predictions per image above "
                           f"model.roi.score_thr={model_cfg.roi.score_thr:g}: train longer, or lower it to look"))
    if not out:
        out.append(Finding(0, "no single cause", "optim.max_steps",
                           "no figure points at one cause (loss falling, positives sampled, anchors fit): train "
                           "longer (optim.max_steps) or check the labels"))
    return sorted(out, key=lambda x: -x.rank)


def format_findings(findings: Sequence[Finding], limit: int = 4) -> list[str]:
    """``["1. <text>", ...]`` for a log message or the run summary."""
    return [f"{i + 1}. {x.text}" for i, x in enumerate(findings[:limit])]
