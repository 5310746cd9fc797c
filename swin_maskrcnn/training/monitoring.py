"""Training health: a fixed probe batch and the collapse alarm.

The predecessor project's failure mode was a detector that "learned" to predict background only:
the training loss kept falling (background is easy), the RoI foreground accuracy sat near zero and
the model produced no detection above the score threshold -- and nobody noticed for days.
:class:`CollapseDetector` encodes that diagnosis as a plain, unit-testable decision rule, and
:class:`ProbeMonitor` is the Lightning callback that feeds it:

* every training batch: the total loss, the RoI foreground accuracy ``acc_fg`` and ``roi_num_pos``;
* every ``probe_every_n_steps`` optimizer steps: the mean number of predictions above the model's
  score threshold per image on a FIXED probe batch (the first K validation images, or training
  images with the test pipeline when there is no validation set), in eval mode.

The alarm fires (``logging.warning`` plus the metric ``monitor/collapse_alarm`` = 1) when, after
``grace_steps``, for ``patience`` consecutive probes: the training loss is falling (mean of the
last ``loss_window`` steps below the mean of the ``loss_window`` steps before them) AND either the
probe predictions are about zero (<= ``min_preds_per_image``) or the recent foreground accuracy is
below ``min_fg_acc`` % while positives were sampled (``roi_num_pos > 0``). It never stops training.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import lightning as L
import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["CollapseVerdict", "CollapseDetector", "ProbeMonitor", "count_predictions"]


@dataclass
class CollapseVerdict:
    """Outcome of one :meth:`CollapseDetector.check`."""

    alarm: bool
    loss_falling: bool
    preds_collapsed: bool
    fg_collapsed: bool
    previous_loss: Optional[float] = None
    recent_loss: Optional[float] = None
    recent_fg_acc: Optional[float] = None
    preds_per_image: Optional[float] = None
    reasons: list[str] = field(default_factory=list)

    def message(self, step: int) -> str:
        parts = [
            f"COLLAPSE ALARM at step {step}: the training loss keeps falling "
            f"({self.previous_loss:.4f} -> {self.recent_loss:.4f}, moving averages) but " + " and ".join(self.reasons) + "."
        ]
        parts.append(
            "The detector is learning to predict background only (the failure mode of the predecessor "
            "project). Check the label mapping (labels 0..C-1, background = C), that boxes/masks match the "
            "images after augmentation, that images are normalised exactly once, the RPN positives "
            "(train/rpn_num_pos) and the loss weights (model.losses)."
        )
        return " ".join(parts)


class CollapseDetector:
    """Decision logic of the collapse alarm, independent of Lightning (see the module docstring)."""

    def __init__(
        self,
        loss_window: int = 50,
        min_relative_drop: float = 0.0,
        min_preds_per_image: float = 0.1,
        min_fg_acc: float = 5.0,
        grace_steps: int = 0,
        patience: int = 1,
    ) -> None:
        if loss_window < 2:
            raise ValueError("loss_window must be >= 2")
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.loss_window = int(loss_window)
        self.min_relative_drop = float(min_relative_drop)
        self.min_preds_per_image = float(min_preds_per_image)
        self.min_fg_acc = float(min_fg_acc)
        self.grace_steps = int(grace_steps)
        self.patience = int(patience)
        self._losses: deque[float] = deque(maxlen=2 * self.loss_window)
        self._fg: deque[float] = deque(maxlen=self.loss_window)
        self._streak = 0

    @classmethod
    def from_config(cls, cfg: Any) -> "CollapseDetector":
        """From a :class:`~swin_maskrcnn.training.config.CollapseConfig`."""
        return cls(
            loss_window=cfg.loss_window,
            min_relative_drop=cfg.min_relative_drop,
            min_preds_per_image=cfg.min_preds_per_image,
            min_fg_acc=cfg.min_fg_acc,
            grace_steps=cfg.grace_steps,
            patience=cfg.patience,
        )

    def record(self, total_loss: float, acc_fg: Optional[float] = None, roi_num_pos: Optional[float] = None) -> None:
        """One training batch. ``acc_fg`` counts only when positives were sampled."""
        if math.isfinite(total_loss):
            self._losses.append(float(total_loss))
        if acc_fg is not None and roi_num_pos is not None and roi_num_pos > 0 and math.isfinite(acc_fg):
            self._fg.append(float(acc_fg))

    def loss_trend(self) -> Optional[tuple[float, float]]:
        """(previous window mean, recent window mean), or None before 2 full windows."""
        if len(self._losses) < 2 * self.loss_window:
            return None
        vals = list(self._losses)
        prev = sum(vals[: self.loss_window]) / self.loss_window
        recent = sum(vals[self.loss_window:]) / self.loss_window
        return prev, recent

    def recent_fg_acc(self) -> Optional[float]:
        return sum(self._fg) / len(self._fg) if self._fg else None

    def check(self, step: int, preds_per_image: Optional[float]) -> CollapseVerdict:
        """Evaluate the rule now (called once per probe). ``preds_per_image`` None = not measured."""
        trend = self.loss_trend()
        falling = trend is not None and trend[1] < (1.0 - self.min_relative_drop) * trend[0]
        fg = self.recent_fg_acc()
        preds_bad = preds_per_image is not None and preds_per_image <= self.min_preds_per_image
        fg_bad = fg is not None and fg < self.min_fg_acc
        reasons = []
        if preds_bad:
            reasons.append(
                f"the probe batch has {preds_per_image:.2f} predictions/image above the score threshold"
            )
        if fg_bad:
            reasons.append(f"the RoI foreground accuracy is {fg:.1f}% with positives sampled")
        condition = step >= self.grace_steps and falling and (preds_bad or fg_bad)
        self._streak = self._streak + 1 if condition else 0
        return CollapseVerdict(
            alarm=self._streak >= self.patience,
            loss_falling=falling,
            preds_collapsed=preds_bad,
            fg_collapsed=fg_bad,
            previous_loss=trend[0] if trend else None,
            recent_loss=trend[1] if trend else None,
            recent_fg_acc=fg,
            preds_per_image=preds_per_image,
            reasons=reasons,
        )


def count_predictions(detections: Sequence[dict[str, Tensor]], score_thr: float) -> list[int]:
    """Number of detections with score >= ``score_thr`` per image."""
    return [int((d["scores"] >= score_thr).sum().item()) for d in detections]


def _scalar(v: Any) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, Tensor):
        return float(v.detach().float().mean().item())
    return float(v)


class ProbeMonitor(L.Callback):
    """Probe batch + collapse alarm as a Lightning callback.

    ``probe_images``: (3, H, W) float images in [0, 1] (test pipeline applied), fixed for the run;
    ``probe_sizes``: their original (h, w). The LightningModule must expose the detector as
    ``pl_module.model`` and return ``total_loss``, ``acc_fg`` and ``roi_num_pos`` in the
    ``training_step`` output dict.
    """

    def __init__(
        self,
        probe_images: Sequence[Tensor],
        probe_sizes: Sequence[tuple[int, int]],
        every_n_steps: int,
        detector: Optional[CollapseDetector] = None,
        batch_size: int = 2,
        evidence: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if len(probe_images) != len(probe_sizes):
            raise ValueError("one original size per probe image")
        self.probe_images = [im.detach().cpu() for im in probe_images]
        self.probe_sizes = [tuple(int(x) for x in s) for s in probe_sizes]
        self.every_n_steps = int(every_n_steps)
        self.detector = detector
        self.batch_size = max(1, int(batch_size))
        self._last_step = -1
        self.alarm_steps: list[int] = []
        #: a diagnostics.collapse.CollapseEvidence fed every step; its diagnosis goes into the alarm
        self.evidence = evidence

    def diagnosis(self, pl_module: L.LightningModule) -> list[str]:
        """The ranked causes (:func:`~swin_maskrcnn.diagnostics.collapse.diagnose`), [] without evidence."""
        if self.evidence is None:
            return []
        from ..diagnostics.collapse import diagnose, format_findings

        lr = None
        trainer = getattr(pl_module, "_trainer", None)
        if trainer is not None and trainer.optimizers:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        return format_findings(diagnose(self.evidence, pl_module.model.cfg, lr=lr))

    @torch.no_grad()
    def probe(self, pl_module: L.LightningModule) -> float:
        """Mean predictions above the score threshold per probe image (eval mode, mode restored)."""
        model = pl_module.model
        thr = float(model.cfg.roi.score_thr)
        was_training = model.training
        model.eval()
        counts: list[int] = []
        try:
            for i in range(0, len(self.probe_images), self.batch_size):
                ims = [im.to(pl_module.device) for im in self.probe_images[i:i + self.batch_size]]
                dets = model(ims, original_sizes=self.probe_sizes[i:i + self.batch_size])
                counts += count_predictions(dets, thr)
        finally:
            model.train(was_training)
        return sum(counts) / max(len(counts), 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.evidence is not None and isinstance(outputs, dict):
            skipped = outputs.get("skipped")
            self.evidence.record({"train/loss": float("nan")} if skipped else dict(getattr(pl_module, "last_train_metrics", {})))
        if self.detector is not None and isinstance(outputs, dict) and not outputs.get("skipped"):
            total = _scalar(outputs.get("total_loss", outputs.get("loss")))
            if total is not None:
                self.detector.record(total, _scalar(outputs.get("acc_fg")), _scalar(outputs.get("roi_num_pos")))
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        ppi = self.probe(pl_module)
        if self.evidence is not None:
            self.evidence.probe_preds_per_image = ppi
        metrics = {"monitor/probe_preds_per_image": ppi}
        if self.detector is not None:
            verdict = self.detector.check(step, ppi)
            metrics["monitor/collapse_alarm"] = float(verdict.alarm)
            metrics["monitor/loss_falling"] = float(verdict.loss_falling)
            if verdict.alarm:
                self.alarm_steps.append(step)
                if trainer.is_global_zero:
                    lines = self.diagnosis(pl_module)
                    log.warning(verdict.message(step) + ("\nLikely causes, most likely first:\n  " + "\n  ".join(lines)
                                                         if lines else ""))
        for logger in trainer.loggers:  # now, whatever log_every_n_steps is
            logger.log_metrics(dict(metrics), step=step)
        pl_module.log("monitor/probe_preds_per_image", ppi, on_step=True, on_epoch=False, logger=False,
                      prog_bar=True, batch_size=1)
        if trainer.is_global_zero:
            log.info("step %d: probe %.2f predictions/image above score_thr", step, ppi)

    def state_dict(self) -> dict[str, Any]:
        return {"alarm_steps": list(self.alarm_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alarm_steps = list(state_dict.get("alarm_steps", []))
