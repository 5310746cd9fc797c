"""Bookkeeping of training steps skipped because their loss or gradients were not finite.

A NaN or inf in one batch (a degenerate box, an fp16 overflow, a learning-rate spike) should cost
that batch, not the run; a run whose every step is non-finite has diverged and must stop with a
diagnosis instead of burning hours without updating a single weight. :class:`DetectionModule`
(``training/module.py``) does the skipping (no parameter update, the lr schedule and the data order
move on); this module counts the skips, builds the messages and decides when to stop.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

__all__ = ["NonFiniteEvent", "NonFiniteGuard", "NonFiniteTrainingError"]

#: skip events kept for the run summary (the count is always complete)
MAX_EVENTS_KEPT = 50


class NonFiniteTrainingError(FloatingPointError):
    """Too many consecutive training steps had a non-finite loss or non-finite gradients."""


@dataclass
class NonFiniteEvent:
    """One skipped optimizer step: ``step`` (0-based optimizer step), ``reason`` ("loss" or
    "gradients"), the image ids of its batch(es) on every rank, and the loss terms when known."""

    step: int
    reason: str
    image_ids: list[Any] = field(default_factory=list)
    loss_terms: dict[str, float] = field(default_factory=dict)


class NonFiniteGuard:
    """Counts skipped steps; :meth:`record` raises :class:`NonFiniteTrainingError` on the
    ``max_consecutive``-th skip in a row, :meth:`record_ok` ends a streak."""

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.total = 0
        self.consecutive = 0
        self.events: list[NonFiniteEvent] = []
        self._streak: list[NonFiniteEvent] = []

    def record_ok(self) -> None:
        self.consecutive = 0
        self._streak = []

    def record(self, event: NonFiniteEvent, lr: float, precision: str, clip_grad_norm: Optional[float]) -> None:
        """Count one skipped step and log it; raise when the streak reaches ``max_consecutive``."""
        self.total += 1
        self.consecutive += 1
        self._streak = (self._streak + [event])[-self.max_consecutive:]
        if len(self.events) < MAX_EVENTS_KEPT:
            self.events.append(event)
        terms = ", ".join(f"{k}={v:.4g}" for k, v in event.loss_terms.items())
        log.warning(
            "step %d skipped (no parameter update): non-finite %s%s; image ids %s; %d in a row (limit %d), %d in all",
            event.step, event.reason, f" ({terms})" if terms else "", event.image_ids, self.consecutive,
            self.max_consecutive, self.total,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(self.diagnosis(lr, precision, clip_grad_norm))

    def diagnosis(self, lr: float, precision: str, clip_grad_norm: Optional[float]) -> str:
        """Why the run stops and what to try, naming the lr, the precision and the images."""
        streak = self._streak
        first, last = streak[0].step, streak[-1].step
        reasons = sorted({e.reason for e in streak})
        images = sorted({i for e in streak for i in e.image_ids}, key=str)
        terms = ", ".join(f"{k}={v:.4g}" for k, v in streak[-1].loss_terms.items()) or "finite loss"
        hints = [f"lower optim.lr (now {lr:.3g}) or lengthen optim.warmup_iters"]
        if precision == "16-mixed":
            hints.append("fp16 overflows: try runtime.precision=bf16-mixed or 32-true")
        if clip_grad_norm is None:
            hints.append("set model.losses.clip_grad_norm")
        hints.append("check the annotations of the images listed")
        return (
            f"training stopped: {len(streak)} consecutive steps ({first}..{last}) had non-finite "
            f"{' and '.join(reasons)} (runtime.max_consecutive_nonfinite={self.max_consecutive}); "
            f"learning rate {lr:.3g}, precision {precision}, clip_grad_norm {clip_grad_norm}; "
            f"last step's loss terms: {terms}; image ids of those batches: {images}. "
            f"Weights are those of step {first} (no update since). Try: {'; '.join(hints)}."
        )

    def summary(self) -> dict[str, Any]:
        """Plain types for the run summary."""
        return {"skipped_steps": self.total, "events": [asdict(e) for e in self.events]}

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "consecutive": self.consecutive,
                "events": [asdict(e) for e in self.events], "streak": [asdict(e) for e in self._streak]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.events = [NonFiniteEvent(**e) for e in state.get("events", [])]
        self._streak = [NonFiniteEvent(**e) for e in state.get("streak", [])]


def image_ids_of(targets: Sequence[dict]) -> list[Any]:
    """Image ids of a collated batch (plain ints where possible, for logs and JSON)."""
    out: list[Any] = []
    for t in targets:
        v = t.get("image_id")
        try:
            out.append(int(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(v if v is None else str(v))
    return out
