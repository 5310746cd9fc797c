"""Lightning wrapper of :class:`~swin_maskrcnn.modeling.detector.SwinMaskRCNN` and the step-based validation.

``DetectionModule`` owns the detector (``self.model``), the optimiser and the schedule. Lightning
does everything else: device placement, DDP, precision, accumulation, gradient clipping
(``Trainer(gradient_clip_val=model.losses.clip_grad_norm)``), checkpoints, loggers, progress bar.

Logged every ``log_every_n_steps`` (``train/`` prefix): ``loss`` (sum of the model's loss dict), each
``loss_*``, each term's share of the total (``share_loss_*``), ``lr``, ``grad_norm`` (global L2 norm
of the gradients BEFORE clipping, and of the unscaled gradients under 16-mixed), ``grad_clipped``
(1 when clipping changed the gradients), ``acc`` and ``acc_fg`` (RoI accuracy, %),
``rpn_num_pos/neg`` and ``roi_num_pos/neg`` (sampled per batch), ``data_epoch`` (passes over the data).

Non-finite steps. A step whose loss (on any rank) or whose gradients are not finite is skipped:
no parameter and no optimiser-state update, while the step counter, the lr schedule and the data
order move on, so a resume still lines up. The loss is checked in ``training_step`` (one all-reduced
flag under DDP, so every rank agrees); such a batch backpropagates a zero that touches every
trainable parameter, which keeps DDP's gradient reducer in step without
``find_unused_parameters``. The gradients are checked in ``on_before_optimizer_step`` (after DDP's
all-reduce, so identical on every rank, and after AMP's unscaling); a skipped step's gradients are
dropped there. Under ``16-mixed`` the GradScaler has already seen the non-finite gradients, so it
still skips its step and lowers its scale as usual. Each skip is logged with the image ids of the
batch on every rank and counted (``train/nonfinite_skipped``, the run summary's ``nonfinite``);
``runtime.max_consecutive_nonfinite`` skips in a row stop the run with
:class:`~swin_maskrcnn.training.nonfinite.NonFiniteTrainingError` naming the lr, the precision and the
images.

Randomness: at the start of every training batch the global torch RNG (CPU and CUDA) is re-seeded
from (``runtime.seed``, the batch's index in the run's global batch stream = ``batch_idx x world_size
+ rank``). The RPN/RoI samplers (and DropPath) therefore draw exactly the same numbers after a
resume as in an uninterrupted run, and W ranks draw for their micro-batches what one process with
``accumulate_grad_batches=W`` draws for the same batches, without storing RNG states in checkpoints.

:class:`PeriodicEvaluation` runs COCO evaluation every ``val_every_n_steps`` optimizer steps from
``val_start_step`` on, and at the last step, on at most ``max_val_images`` images: every rank predicts
its share of the images (``evaluation.predict_coco_results``), rank 0 gathers the results in dataset
order and runs COCOeval (``evaluation.summarize_predictions``), then broadcasts the metrics.
:class:`BestCheckpoint` is Lightning's ``ModelCheckpoint`` restricted to the steps where that
evaluation ran (monitor ``val/segm_AP``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ..checkpoint.format import META_KEY
from ..checkpoint.native import build_meta
from ..io_utils import atomic_write, json_ready
from ..evaluation import flatten_metrics, predict_coco_results, summarize_predictions
from ..modeling.detector import SwinMaskRCNN
from .optim import build_optimizer, build_scheduler
from .config import TrainConfig
from .nonfinite import NonFiniteEvent, NonFiniteGuard, image_ids_of

log = logging.getLogger(__name__)

__all__ = ["DetectionModule", "PeriodicEvaluation", "BestCheckpoint", "step_seed", "log_to_loggers", "gather_objects",
           "val_shard"]

_PROG_BAR = {"train/loss", "train/lr", "train/acc_fg"}
#: checkpoint key of the non-finite step counts (plain types: loads with weights_only=True)
_NONFINITE_KEY = "swin_maskrcnn_nonfinite"


def step_seed(seed: int, batch_index: int) -> int:
    """Deterministic 63-bit seed of one training batch (``batch_index`` in the run's global stream)."""
    digest = hashlib.blake2b(f"step:{seed}:{batch_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def gather_objects(trainer: L.Trainer, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _gather_to_rank0(trainer: L.Trainer, obj: Any) -> Optional[list[Any]]:
    """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` in a single process."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: Optional[list[Any]] = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def val_shard(num_images: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Dataset indices rank ``rank`` predicts: batch j of the single-process batching (images
    ``j*batch_size ..``) goes to rank ``j % world_size``, so every image is predicted in the same
    batch (same padding) as in a single process and the gathered results are identical."""
    return [i for j, start in enumerate(range(0, num_images, batch_size)) if j % world_size == rank
            for i in range(start, min(start + batch_size, num_images))]


def log_to_loggers(trainer: L.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Write metrics to every logger at ``step`` now (independent of ``log_every_n_steps``)."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm over all gradients, as ``clip_grad_norm_`` computes it (``get_total_norm`` needs torch 2.6)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach(), 2.0) for g in grads]), 2.0)


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
        # run batch index -> passes over the data (RunBatchSampler.data_epoch), set by the data module
        self.data_epoch_of: Optional[Callable[[int], float]] = None
        self.last_train_metrics: dict[str, float] = {}
        self.nonfinite = NonFiniteGuard(cfg.runtime.max_consecutive_nonfinite)
        # the current optimizer step's micro-batches: (image ids) and the loss event, if any
        self._step_image_ids: list[Any] = []
        self._step_loss_event: Optional[NonFiniteEvent] = None

    # -------------------------------------------------------------------------------- inference
    def forward(self, images: Sequence[Tensor], targets: Optional[Sequence[dict]] = None, original_sizes=None):
        if targets is not None:
            return self.model(images, targets)
        return self.model(images, original_sizes=original_sizes)

    # -------------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        world, rank = self.trainer.world_size, self.global_rank
        torch.manual_seed(step_seed(self.cfg.runtime.seed, batch_idx * world + rank))

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` OR-ed over the ranks (one scalar all-reduce under DDP)."""
        if self.trainer.world_size == 1:
            return flag
        t = torch.tensor(float(flag), device=self.device)
        return bool(self.trainer.strategy.reduce(t, reduce_op="sum").item() > 0)

    def _zero_loss(self) -> Tensor:
        """0, with a (zero) gradient path to every trainable parameter: what a skipped micro-batch
        backpropagates, so DDP's reducer sees every gradient it waits for."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.reshape(-1)[:1].sum() for p in params]).sum() * 0.0

    def _note_nonfinite_loss(self, losses: Mapping[str, Tensor], total: Tensor, targets: Sequence[dict]) -> None:
        """Record this step's loss event: every rank's image ids and the non-finite terms (collective:
        every rank calls it, since the decision to skip was all-reduced)."""
        local_bad = not math.isfinite(float(total.detach()))
        terms = {k: float(v.detach()) for k, v in losses.items()} if local_bad else {}
        gathered = gather_objects(self.trainer, (image_ids_of(targets), terms))
        bad_terms = {f"{k}@rank{r}" if len(gathered) > 1 else k: v for r, (_, t) in enumerate(gathered)
                     for k, v in t.items() if not math.isfinite(v)}
        event = self._step_loss_event or NonFiniteEvent(step=int(self.global_step), reason="loss")
        event.image_ids.extend(i for ids, _ in gathered for i in ids)
        event.loss_terms.update(bad_terms)
        self._step_loss_event = event

    def training_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> dict[str, Any]:
        images, targets = batch
        self._step_image_ids.extend(image_ids_of(targets))
        losses, stats = self.model.losses_and_stats(images, targets)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        n = len(images)
        skipped = self._any_rank(not bool(torch.isfinite(total)))
        if skipped:
            self._note_nonfinite_loss(losses, total, targets)
        # a skipped step logs NaN losses (Lightning would otherwise repeat the previous step's values)
        total_d = torch.tensor(float("nan")) if skipped else total.detach()
        metrics: dict[str, Tensor] = {"train/loss": total_d}
        for k, v in losses.items():
            v = total_d if skipped else v.detach().float()
            metrics[f"train/{k}"] = v
            metrics[f"train/share_{k}"] = v / total_d.clamp_min(1e-12)
        for k, v in stats.items():  # the model's detached statistics (acc, counts, weight_* when learned)
            metrics[f"train/{k}"] = v.float()
        metrics["train/lr"] = torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        if self.data_epoch_of is not None:
            metrics["train/data_epoch"] = torch.tensor(self.data_epoch_of(batch_idx))
        for k, v in metrics.items():
            self.log(k, v, on_step=True, on_epoch=False, prog_bar=k in _PROG_BAR, batch_size=n)
        # x-axis of the loggers = optimizer steps completed after this batch (Lightning's default is
        # one less), so training rows, validation rows and checkpoint names share one step count.
        self.log("step", float(self.global_step + 1), on_step=True, on_epoch=False, batch_size=n)
        if skipped:
            return {"loss": self._zero_loss(), "skipped": True}
        self.last_train_metrics = {k: float(v) for k, v in metrics.items()}
        result: dict[str, Any] = {"loss": total, "total_loss": total_d}
        for k in ("acc_fg", "roi_num_pos"):
            if k in stats:
                result[k] = stats[k]
        return result

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after backward (after DDP's all-reduce; after unscaling under 16-mixed), BEFORE
        # Lightning clips and before the optimizer (or the GradScaler) steps.
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = _total_norm(grads) if grads else None
        event, self._step_loss_event = self._step_loss_event, None
        ids, self._step_image_ids = self._step_image_ids, []
        if event is None and norm is not None and not bool(torch.isfinite(norm)):
            event = NonFiniteEvent(step=int(self.global_step), reason="gradients",
                                   image_ids=[i for part in gather_objects(self.trainer, ids) for i in part])
        if event is not None:
            # no update: optimizers skip parameters without a gradient (their state is untouched too)
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None
            self.nonfinite.record(event, lr=float(optimizer.param_groups[0]["lr"]),
                                  precision=str(self.trainer.precision), clip_grad_norm=self.cfg.model.losses.clip_grad_norm)
        else:
            self.nonfinite.record_ok()
        self.log("train/nonfinite_skipped", float(self.nonfinite.total), on_step=True, on_epoch=False, batch_size=1)
        if event is not None:
            return
        if norm is None:
            return
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
        checkpoint[_NONFINITE_KEY] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.load_state_dict(checkpoint.get(_NONFINITE_KEY, {}))


class PeriodicEvaluation(L.Callback):
    """COCO evaluation every ``every_n_steps`` optimizer steps (from ``start_step`` on) and at the
    final step, predicted by every rank on its share of the images and scored on rank 0; metrics are
    broadcast, logged as ``val/bbox_AP``, ``val/segm_AP``, ...,
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
        stop: Optional[Any] = None,
    ) -> None:
        super().__init__()
        self.stop = stop  # the run's StopController (training/stop.py), or None
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
        self.validated_at_start: Optional[int] = None  # the step of a validation run in on_train_start

    def is_due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        if step == 0 or step == self.last_eval_step:
            return False
        final = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        return final or (step >= self.start_step and step % self.every_n_steps == 0)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Every rank predicts its :func:`val_shard`; rank 0 runs COCOeval on the gathered results
        (in dataset order, as one process would have them), writes the JSON and broadcasts."""
        step = trainer.global_step
        model = pl_module.model
        n = len(self.dataset) if self.max_images is None else min(len(self.dataset), int(self.max_images))
        indices = val_shard(n, self.batch_size, trainer.global_rank, trainer.world_size)
        thr = float(model.cfg.roi.score_thr)
        mine = predict_coco_results(model, self.dataset, indices, batch_size=self.batch_size, score_thr=thr)
        parts = _gather_to_rank0(trainer, (indices, mine))
        flat: Optional[dict[str, float]] = None
        if trainer.is_global_zero:
            by_index: dict[int, tuple[list[dict], int, int]] = {}
            for idx, (results, ids, counts) in parts:
                per_image: dict[int, list[dict]] = {}
                for r in results:
                    per_image.setdefault(int(r["image_id"]), []).append(r)
                for i, img_id, c in zip(idx, ids, counts):
                    by_index[i] = (per_image.get(img_id, []), img_id, c)
            order = sorted(by_index)
            results = [r for i in order for r in by_index[i][0]]
            metrics = summarize_predictions(self.dataset, results, [by_index[i][1] for i in order],
                                            [by_index[i][2] for i in order], max_dets=self.max_dets)
            flat = {k.replace("/", "_"): v for k, v in flatten_metrics(metrics).items()}
            flat["preds_per_image"] = float(metrics["mean_num_predictions"])
            flat["num_images"] = float(metrics["num_images"])
            if self.out_dir is not None:
                atomic_write(self.out_dir / f"step_{step:07d}.json",
                             lambda f: json.dump(json_ready({"step": step, **metrics}), f, indent=1))
            log.info(
                "step %d validation: bbox AP %.4f, segm AP %.4f, %.2f predictions/image (%d images, %d ranks)",
                step, flat.get("bbox_AP", float("nan")), flat.get("segm_AP", float("nan")),
                flat["preds_per_image"], int(flat["num_images"]), trainer.world_size,
            )
        flat = trainer.strategy.broadcast(flat, src=0)
        assert flat is not None
        return flat

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run whose checkpoint's step had a validation due that did not run (abandoned on a
        # stop signal, or a kill during it): run it now, before the next step
        if self.is_due(trainer) and not (self.stop is not None and self.stop.stopping):
            log.info("step %d: running the validation that was due when this checkpoint was written", trainer.global_step)
            self._validate(trainer, pl_module, at_start=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.is_due(trainer):
            return
        self._validate(trainer, pl_module)

    def _validate(self, trainer: L.Trainer, pl_module: L.LightningModule, at_start: bool = False) -> None:
        step = trainer.global_step
        stop = self.stop
        if stop is not None and stop.check(trainer):
            log.warning("step %d: the validation due now runs when the run is resumed", step)
            return
        if stop is None:
            flat = self.evaluate(trainer, pl_module)
        else:
            from .stop import StopRequested

            try:
                with stop.validation():
                    flat = self.evaluate(trainer, pl_module)
            except StopRequested as e:
                log.warning("step %d: validation abandoned on %s; it runs first when the run is resumed", step,
                            e.signame)
                stop.stop_now(trainer, e.signum, abandoned="validation")
                return
        self.last_eval_step = step
        if at_start:
            self.validated_at_start = step
        self.last_metrics = flat
        self.history.append((step, flat))
        named = {f"val/{k}": v for k, v in flat.items()}
        log_to_loggers(trainer, named, step)
        for k, v in named.items():  # callback_metrics (best checkpoint) and progress bar, not loggers
            if not at_start:  # (Lightning allows no step-level self.log in on_train_start)
                pl_module.log(k, v, on_step=True, on_epoch=False, logger=False,
                              prog_bar=k in ("val/segm_AP", "val/bbox_AP"), batch_size=1)
        if stop is not None:
            stop.check(trainer)  # a signal during a validation that completed (DDP): stop at this step

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the evaluation ran a validation that was due at the resumed step (PeriodicEvaluation.on_train_start)
        ev = self._evaluation
        if ev.validated_at_start != trainer.global_step or ev.last_metrics is None:
            return
        candidates = self._monitor_candidates(trainer)
        candidates.update({f"val/{k}": torch.tensor(float(v)) for k, v in ev.last_metrics.items()})
        self._save_topk_checkpoint(trainer, candidates)
