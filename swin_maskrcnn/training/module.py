"""Lightning wrapper of :class:`~swin_maskrcnn.modeling.detector.SwinMaskRCNN` and the step-based validation.

``DetectionModule`` owns the detector (``self.model``), the optimiser and the schedule. Lightning
does everything else: device placement, DDP, precision, accumulation, gradient clipping
(``Trainer(gradient_clip_val=model.losses.clip_grad_norm)``), checkpoints, loggers, progress bar.

Logged every ``log_every_n_steps`` (``train/`` prefix): ``loss`` (sum of the ``loss_*`` terms), each
``loss_*``, each term's share of the total (``share_loss_*``), ``lr``, ``grad_norm`` (global L2 norm
of the gradients BEFORE clipping, and of the unscaled gradients under 16-mixed), ``grad_clipped``
(1 when clipping changed the gradients), ``acc`` and ``acc_fg`` (RoI accuracy, %),
``rpn_num_pos/neg`` and ``roi_num_pos/neg`` (sampled per batch), ``data_epoch`` (passes over the data).

There is deliberately no try/except around the step: a crash is a crash, never a silently skipped
batch. A non-finite loss raises ``FloatingPointError`` naming the step and every loss term.

Randomness: at the start of every training batch the global torch RNG (CPU and CUDA) is re-seeded
from (``runtime.seed``, batch index in the run, rank). The RPN/RoI samplers (and DropPath) therefore
draw exactly the same numbers after a resume as in an uninterrupted run, on any number of devices,
without storing RNG states in checkpoints.

:class:`PeriodicEvaluation` runs COCO evaluation (``evaluation.evaluate_model``: COCOeval bbox +
segm) on rank 0 every ``val_every_n_steps`` optimizer steps from ``val_start_step`` on, and at the last
step, on at most ``max_val_images`` images; :class:`BestCheckpoint` is Lightning's ``ModelCheckpoint``
restricted to the steps where that evaluation ran (monitor ``val/segm_AP``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ..checkpoint.native import META_KEY, build_meta
from ..io_utils import json_ready
from ..evaluation import evaluate_model, flatten_metrics
from ..modeling.detector import SwinMaskRCNN
from .optim import build_optimizer, build_scheduler
from .config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["DetectionModule", "PeriodicEvaluation", "BestCheckpoint", "step_seed", "log_to_loggers"]

_PROG_BAR = {"train/loss", "train/lr", "train/acc_fg"}


def step_seed(seed: int, batch_index: int, rank: int) -> int:
    """Deterministic 63-bit seed of one training batch."""
    digest = hashlib.blake2b(f"step:{seed}:{batch_index}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def log_to_loggers(trainer: L.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Write metrics to every logger at ``step`` now (independent of ``log_every_n_steps``)."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


class DetectionModule(L.LightningModule):
    """Training wrapper. ``cfg`` is the whole :class:`TrainConfig`; ``class_names`` and
    ``cat_id_to_label`` (dataset category id -> label) go into every checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        class_names: Sequence[str],
        cat_id_to_label: Optional[Mapping[int, int]],
        model: Optional[SwinMaskRCNN] = None,
    ) -> None:
        super().__init__()
        if len(class_names) != cfg.model.num_classes:
            raise ValueError(f"{len(class_names)} class names for model.num_classes={cfg.model.num_classes}")
        self.cfg = cfg
        self.model = model if model is not None else SwinMaskRCNN(cfg.model)
        self.class_names = list(class_names)
        self.cat_id_to_label = None if cat_id_to_label is None else {int(k): int(v) for k, v in cat_id_to_label.items()}
        self.batches_per_data_epoch: Optional[int] = None  # set by the data module, for train/data_epoch
        self.last_train_metrics: dict[str, float] = {}

    # -------------------------------------------------------------------------------- inference
    def forward(self, images: Sequence[Tensor], targets: Optional[Sequence[dict]] = None, original_sizes=None):
        if targets is not None:
            return self.model(images, targets)
        return self.model(images, original_sizes=original_sizes)

    # -------------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.cfg.runtime.seed, batch_idx, self.global_rank))

    def training_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> dict[str, Any]:
        images, targets = batch
        out = self.model(images, targets)
        losses = {k: v for k, v in out.items() if k.startswith("loss_")}
        if not losses:
            raise RuntimeError(f"the model returned no loss_* terms (keys: {sorted(out)})")
        total = torch.stack([v.float() for v in losses.values()]).sum()
        if not torch.isfinite(total):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step} (batch {batch_idx}): {terms}; "
                f"image ids {[t.get('image_id') for t in targets]}"
            )
        n = len(images)
        total_d = total.detach()
        metrics: dict[str, Tensor] = {"train/loss": total_d}
        for k, v in losses.items():
            v = v.detach().float()
            metrics[f"train/{k}"] = v
            metrics[f"train/share_{k}"] = v / total_d.clamp_min(1e-12)
        for k, v in out.items():  # the model's detached statistics (acc, counts, weight_* when learned)
            if not k.startswith("loss_"):
                metrics[f"train/{k}"] = torch.as_tensor(v).detach().float()
        metrics["train/lr"] = torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        if self.batches_per_data_epoch:
            metrics["train/data_epoch"] = torch.tensor((batch_idx + 1) / self.batches_per_data_epoch)
        for k, v in metrics.items():
            self.log(k, v, on_step=True, on_epoch=False, prog_bar=k in _PROG_BAR, batch_size=n)
        # x-axis of the loggers = optimizer steps completed after this batch (Lightning's default is
        # one less), so training rows, validation rows and checkpoint names share one step count.
        self.log("step", float(self.global_step + 1), on_step=True, on_epoch=False, batch_size=n)
        self.last_train_metrics = {k: float(v) for k, v in metrics.items()}
        result: dict[str, Any] = {"loss": total, "total_loss": total_d}
        for k in ("acc_fg", "roi_num_pos"):
            if k in out:
                result[k] = torch.as_tensor(out[k]).detach()
        return result

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after backward (and after unscaling under 16-mixed), BEFORE Lightning clips.
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        clip = self.cfg.model.losses.clip_grad_norm
        if clip is not None:
            self.log("train/grad_clipped", (norm > clip).float(), on_step=True, on_epoch=False, batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.cfg.optim)
        scheduler = build_scheduler(optimizer, self.cfg.optim)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"},
        }

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = build_meta(self.cfg, self.class_names, self.cat_id_to_label, self.global_step)


class PeriodicEvaluation(L.Callback):
    """COCO evaluation every ``every_n_steps`` optimizer steps (from ``start_step`` on) and at the
    final step, on rank 0; metrics are broadcast, logged as ``val/bbox_AP``, ``val/segm_AP``, ...,
    ``val/preds_per_image``, and written (with per-class AP) to ``out_dir/step_XXXXXXX.json``."""

    def __init__(
        self,
        dataset: Any,
        every_n_steps: int,
        start_step: int = 0,
        max_images: Optional[int] = None,
        max_dets: Sequence[int] = (1, 10, 100),
        batch_size: int = 1,
        out_dir: Optional[Path] = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.every_n_steps = int(every_n_steps)
        self.start_step = int(start_step)
        self.max_images = max_images
        self.max_dets = tuple(int(d) for d in max_dets)
        self.batch_size = int(batch_size)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.last_eval_step = -1
        self.last_metrics: Optional[dict[str, float]] = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def is_due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        if step == 0 or step == self.last_eval_step:
            return False
        final = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        return final or (step >= self.start_step and step % self.every_n_steps == 0)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        step = trainer.global_step
        flat: Optional[dict[str, float]] = None
        if trainer.is_global_zero:
            model = pl_module.model
            metrics, _ = evaluate_model(
                model,
                self.dataset,
                batch_size=self.batch_size,
                max_images=self.max_images,
                max_dets=self.max_dets,
                progress=False,
                score_thr=float(model.cfg.roi.score_thr),
            )
            flat = {k.replace("/", "_"): v for k, v in flatten_metrics(metrics).items()}
            flat["preds_per_image"] = float(metrics["mean_num_predictions"])
            flat["num_images"] = float(metrics["num_images"])
            if self.out_dir is not None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                record = json_ready({"step": step, **metrics})
                with open(self.out_dir / f"step_{step:07d}.json", "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=1)
            log.info(
                "step %d validation: bbox AP %.4f, segm AP %.4f, %.2f predictions/image (%d images)",
                step, flat.get("bbox_AP", float("nan")), flat.get("segm_AP", float("nan")),
                flat["preds_per_image"], int(flat["num_images"]),
            )
        trainer.strategy.barrier("swin_maskrcnn_validation")
        flat = trainer.strategy.broadcast(flat, src=0)
        assert flat is not None
        return flat

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.is_due(trainer):
            return
        step = trainer.global_step
        flat = self.evaluate(trainer, pl_module)
        self.last_eval_step = step
        self.last_metrics = flat
        self.history.append((step, flat))
        named = {f"val/{k}": v for k, v in flat.items()}
        log_to_loggers(trainer, named, step)
        for k, v in named.items():  # callback_metrics (best checkpoint) and progress bar, not loggers
            pl_module.log(k, v, on_step=True, on_epoch=False, logger=False,
                          prog_bar=k in ("val/segm_AP", "val/bbox_AP"), batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_eval_step": self.last_eval_step, "history": [[s, m] for s, m in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_eval_step = int(state_dict.get("last_eval_step", -1))
        self.history = [(int(s), dict(m)) for s, m in state_dict.get("history", [])]
        self.last_metrics = self.history[-1][1] if self.history else None


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (monitor, mode, top-k as usual) consulted only at the steps where
    ``evaluation`` has just produced metrics, so stale or missing metrics never trigger it."""

    def __init__(self, evaluation: PeriodicEvaluation, **kwargs: Any) -> None:
        kwargs.setdefault("every_n_train_steps", 1)
        super().__init__(**kwargs)
        self._evaluation = evaluation

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._evaluation.last_eval_step != trainer.global_step:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
