"""``train(cfg)``: datasets, resumable data order, Lightning Trainer, checkpoints, logs, summary.

Run layout (``runtime.out_dir/run_name``)::

    config.yaml                 resolved config (config-resume-<time>.yaml when a resume changed it)
    checkpoints/step_XXXXXXX.ckpt, last.ckpt, best.ckpt   Lightning checkpoints (carry our metadata)
    model_final.pt              final weights in our own format (checkpoint_io)
    csv/version_N/metrics.csv   every logged scalar as CSV
    tensorboard/version_N/      the same scalars for TensorBoard, when ``tensorboard`` is installed
    val/step_XXXXXXX.json       every validation: all metrics incl. per-class AP
    summary.json                the run summary (also of a run stopped by a signal or runtime.max_minutes)

Stops. A stop signal (``runtime.stop_signals``) or ``runtime.max_minutes`` ends the run at the end
of an optimizer step on every rank; ``last.ckpt``, ``model_final.pt`` and ``summary.json`` are then
written as at the end of a run, and the summary says ``stopped_by`` with the resume command
(``training/stop.py``).

Data order: :class:`~swin_maskrcnn.data.loader.RunBatchSampler` (the whole run's batches, resumable,
sharded across ranks) and :class:`~swin_maskrcnn.data.loader.SeededSamples` (per-sample augmentation
seeds); see :mod:`swin_maskrcnn.data.loader`. Because the sampler shards across ranks itself, the
Trainer runs with ``use_distributed_sampler=False``.
"""
from __future__ import annotations

import copy
import json
import importlib.util
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from ..checkpoint.loader import read_checkpoint
from ..checkpoint.native import save_checkpoint
from .checkpoint_io import AtomicCheckpointIO, checkpoint_step, resolve_resume
from ..io_utils import OutputWriteError, atomic_write, check_writable, json_ready
from ..data.coco import CocoInstanceDataset
from ..data.validation import require_instances
from ..data.repeat_factor import image_repeat_factors
from ..data.loader import RunBatchSampler, SeededSamples, build_train_loader, collate, sample_seed  # noqa: F401 - re-exported
from ..data.transforms import build_test_transforms, build_train_transforms
from .module import BestCheckpoint, DetectionModule, PeriodicEvaluation
from ..checkpoint.strict import load_state_dict_strict
from ..errors import CheckpointError
from .class_transfer import format_transfer_report, transfer_class_rows, write_transfer_report
from ..checkpoint.imagenet import load_imagenet_backbone
from ..modeling.detector import SwinMaskRCNN
from ..modeling.acceleration import channels_last_convolutions, compile_dense
from ..runtime import keep_freed_memory
from ..signals import signal_name
from .monitoring import CollapseDetector, ProbeMonitor
from .auto_anchors import apply_auto_anchors
from ..diagnostics.anchor_fit import fit_anchors
from ..diagnostics.collapse import AnchorFit, CollapseEvidence
from .preflight import check_hardware, check_resume
from .config import ConfigError, TrainConfig, check_num_classes, dump_config, save_config
from .stop import StopController, StopRequested, requeue_slurm_job, resume_command, stop_exit_code

log = logging.getLogger(__name__)

__all__ = [
    "train",
    "build_loggers",
    "sample_seed",
    "SeededSamples",
    "RunBatchSampler",
    "DetectionDataModule",
    "build_datasets",
    "init_weights_from",
    "resolve_run_dir",
    "check_output_dir",
    "estimate_checkpoint_bytes",
    "build_model",
    "build_callbacks",
    "build_trainer",
    "run_summary",
    "RunCallbacks",
    "RUN_DIR_ENV",
    "RESUME_ENV",
]

#: set by the launching process so DDP ranks started later write into the same run folder
RUN_DIR_ENV = "SWIN_MASKRCNN_RUN_DIR"
#: likewise the checkpoint the launching process resolved from --resume (all ranks resume the same file)
RESUME_ENV = "SWIN_MASKRCNN_RESUME_CKPT"
#: layers that depend on the class count; they keep their fresh init when fine-tuning to new classes
CLASS_SPECIFIC_PREFIXES = (
    "roi_head.bbox_head.fc_cls.",
    "roi_head.bbox_head.fc_reg.",
    "roi_head.mask_head.conv_logits.",
)


class DetectionDataModule(L.LightningDataModule):
    """Builds the training loader when Lightning asks for it, i.e. after a checkpoint's step has
    been restored and when the rank/world size are known."""

    def __init__(self, cfg: TrainConfig, train_dataset: Dataset) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_dataset = train_dataset
        self.sampler: Optional[RunBatchSampler] = None

    def train_dataloader(self) -> DataLoader:
        cfg, trainer = self.cfg, self.trainer
        accum = cfg.optim.accumulate_grad_batches
        start = int(trainer.global_step) * accum
        factors = self.repeat_factors()
        self.sampler = RunBatchSampler(
            self.train_dataset.aspect_ratios(),  # type: ignore[attr-defined]
            batch_size=cfg.data.batch_size,
            num_batches=cfg.optim.max_steps * accum,
            seed=cfg.data.seed,
            group_by_aspect_ratio=cfg.data.group_by_aspect_ratio,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            start_batch=start,
            repeat_factors=factors,
        )
        if factors is not None:
            n = len(factors)
            first = sum(len(b) for b in self.sampler.epoch_items(0))
            log.info("repeat-factor sampling (threshold %g): %d images, effective epoch size %.1f images on average "
                     "(x%.3f; max factor %.2f, %d images repeated); data epoch 0: %d images, %d batches on this rank",
                     cfg.data.repeat_factor_threshold, n, sum(factors), sum(factors) / n, max(factors),
                     sum(f > 1.0 for f in factors), first, self.sampler.batches_per_epoch)
        if trainer.lightning_module is not None:
            trainer.lightning_module.data_epoch_of = self.sampler.data_epoch
        if start:
            epoch, offset = self.sampler.position(start)
            log.info("resuming data order at run batch %d (data epoch %d, batch %d of %d)",
                     start, epoch, offset, self.sampler.rank_batches_in(epoch))
        return build_train_loader(
            self.train_dataset, self.sampler, num_workers=cfg.data.num_workers, seed=cfg.data.seed,
            pin_memory=torch.cuda.is_available() and cfg.runtime.accelerator in ("auto", "gpu", "cuda"),
        )

    def repeat_factors(self) -> Optional[list[float]]:
        """Per-image repeat factors of ``data.repeat_factor_threshold`` (None when off)."""
        t = self.cfg.data.repeat_factor_threshold
        if t is None:
            return None
        ds = self.train_dataset
        labels = [ds.instance_boxes(i)[1].tolist() for i in range(len(ds))]  # type: ignore[attr-defined,arg-type]
        return image_repeat_factors(labels, t)

    def state_dict(self) -> dict[str, Any]:
        return {"data_seed": self.cfg.data.seed, "num_images": len(self.train_dataset),  # type: ignore[arg-type]
                "batch_size": self.cfg.data.batch_size,
                "repeat_factor_threshold": self.cfg.data.repeat_factor_threshold}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        now = self.state_dict()
        changed = {k: (state_dict.get(k), v) for k, v in now.items() if state_dict.get(k) != v}
        if changed:
            log.warning("resuming with a different data setup %s (checkpoint, now): the data order after "
                        "the resume differs from the original run's", changed)


# ------------------------------------------------------------------------------------------------
# datasets, weights, run folder
# ------------------------------------------------------------------------------------------------
def build_datasets(cfg: TrainConfig) -> tuple[CocoInstanceDataset, Optional[CocoInstanceDataset]]:
    """(train, val or None); checks num_classes and that val has the same categories."""
    d = cfg.data
    train_tf = build_train_transforms(
        d.transforms, scale=tuple(d.scale), flip_prob=d.flip_prob,
        ms_scales=None if d.ms_scales is None else [tuple(s) for s in d.ms_scales],
        crop_pre_scales=None if d.crop_pre_scales is None else [tuple(s) for s in d.crop_pre_scales],
        crop_size=tuple(d.crop_size),
    )
    # uint8 images: the model's input is the same as from float ones (float32(u / 255) * 255 == u), with a
    # quarter of the bytes to pass between workers, pin and copy to the GPU
    train_ds = CocoInstanceDataset(d.train_ann, d.train_images, transforms=train_tf,
                                   filter_empty_gt=d.filter_empty_gt, min_size=d.min_size, bad_images=d.bad_images,
                                   crowd=d.crowd, image_dtype="uint8")
    check_num_classes(cfg, train_ds, "training")
    if d.crowd == "ignore" and cfg.model.rpn.ignore_iof_thr <= 0 and cfg.model.roi.ignore_iof_thr <= 0:
        log.warning("data.crowd=ignore but model.rpn.ignore_iof_thr and model.roi.ignore_iof_thr are off (<= 0): "
                    "the %d ignore regions change nothing (mmdet uses 0.5)", train_ds.num_ignore_boxes())
    require_instances(train_ds, "data.train_ann")
    val_ds = None
    if d.val_ann is not None:
        test_tf = build_test_transforms(cfg.model.test_scale)
        val_ds = CocoInstanceDataset(d.val_ann, d.val_images, transforms=test_tf, bad_images=d.bad_images)
        check_num_classes(cfg, val_ds, "validation")
        require_instances(val_ds, "data.val_ann")
        if val_ds.cat_ids != train_ds.cat_ids:
            raise ConfigError(f"data.val_ann {d.val_ann} has category ids {val_ds.cat_ids[:10]}... but "
                              f"data.train_ann has {train_ds.cat_ids[:10]}...: the label mappings would differ")
    return train_ds, val_ds


def _probe_batch(cfg: TrainConfig, train_ds: CocoInstanceDataset, val_ds: Optional[CocoInstanceDataset]):
    """First K validation images (else training images through the test pipeline) and their sizes."""
    if val_ds is not None:
        source = val_ds
    else:
        source = copy.copy(train_ds)
        source.transforms = build_test_transforms(cfg.model.test_scale)
        source.image_dtype = "float32"  # the probe monitor's contract: float images in [0, 1]
    k = min(cfg.runtime.probe_images, len(source))
    images, sizes = [], []
    for i in range(k):
        img, tgt = source[i]
        images.append(img)
        sizes.append(tuple(int(v) for v in tgt["orig_size"]))
    return images, sizes


def init_weights_from(model: SwinMaskRCNN, path: str, class_names: Optional[Sequence[str]] = None,
                      class_map: Optional[dict[str, str]] = None, run_dir: Optional[Path] = None,
                      map_classes: bool = True) -> list[str]:
    """Load detector weights (mmdet / ours / Lightning); returns the keys not loaded (fresh init).

    With ``class_names`` (the dataset's) and class names in the checkpoint's meta, the class-specific
    layers keep each class found there by name (or ``class_map``: {dataset_name: checkpoint_name}) and
    the background row (training/class_transfer.py); otherwise, with a different class count, they
    keep their init. Every other key must match (a CheckpointError naming init.checkpoint). The
    transfer report is logged and, with ``run_dir``, written there (transfer_report.json / .txt).
    ``map_classes=False`` (``init.map_classes: false``): every class-specific tensor keeps its fresh
    init (no by-name copy, whatever the names and counts)."""
    sd, meta = read_checkpoint(path)
    own = model.state_dict()
    bad = sorted(k for k in set(sd) & set(own) if not k.startswith(CLASS_SPECIFIC_PREFIXES)
                 and tuple(sd[k].shape) != tuple(own[k].shape))
    if bad:
        raise CheckpointError(
            f"init.checkpoint={path}: does not fit the configured model outside the class-specific layers: "
            + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:8])
            + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""))
    ckpt_names = meta.get("class_names")
    report: dict[str, Any] = {"checkpoint": str(path), "source": meta["source"], "classes": None,
                              "map_classes": bool(map_classes)}
    skipped, partial = [], []
    if not map_classes:
        if class_map:
            raise ConfigError("init.class_map is set but init.map_classes is false (nothing is mapped)")
        for k in list(sd):
            if k.startswith(CLASS_SPECIFIC_PREFIXES) and k in own:
                skipped.append(k)
                sd[k] = own[k]
    elif class_names is not None and ckpt_names:
        report.update(transfer_class_rows(sd, own, list(class_names), list(ckpt_names), class_map))
        partial = sorted(report["class_tensors"])
    else:
        if class_map:
            raise ConfigError(f"init.class_map is set but init.checkpoint={path} carries no class names")
        for k in list(sd):
            if k.startswith(CLASS_SPECIFIC_PREFIXES) and k in own and tuple(sd[k].shape) != tuple(own[k].shape):
                skipped.append(k)
                sd[k] = own[k]
    load_state_dict_strict(model, sd, source=f"init.checkpoint={path}")
    report.update(tensors_loaded=len(sd) - len(skipped), tensors_reinitialised=len(skipped),
                  tensors_reinitialised_keys=sorted(skipped), tensors_partial=partial)
    log.info("%s", format_transfer_report(report).rstrip())
    if run_dir is not None:
        write_transfer_report(report, run_dir)
    return skipped


def resolve_run_dir(cfg: TrainConfig, resume: Optional[str] = None, name_hint: Optional[str] = None) -> Path:
    """runtime.out_dir/run_name; a resume without run_name continues in the checkpoint's run."""
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return Path(env)
    if cfg.runtime.run_name:
        return Path(cfg.runtime.out_dir) / cfg.runtime.run_name
    if resume is not None:
        p = Path(resume).resolve()
        if p.parent.name == "checkpoints":
            return p.parent.parent
    external = _externally_launched_world()
    if external > 1:
        raise ConfigError(
            f"this process is one of {external} ranks started by torchrun/SLURM: set runtime.run_name so that every "
            "rank writes into the same run folder (a timestamped name could differ between ranks)"
        )
    stem = name_hint or cfg.model.variant
    return Path(cfg.runtime.out_dir) / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}"


def _externally_launched_world() -> int:
    """World size when a launcher other than Lightning (torchrun, SLURM's srun) started every rank,
    else 1. Lightning's own launcher passes RUN_DIR_ENV instead, which is checked first."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        try:
            n = int(os.environ.get(key, "1"))
        except ValueError:
            continue
        if n > 1:
            return n
    return 1


def _write_config(cfg: TrainConfig, run_dir: Path) -> Path:
    """config.yaml; a resume whose config differs writes config-resume-<time>.yaml beside it."""
    path = run_dir / "config.yaml"
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if old.split("\n", 1)[-1] == dump_config(cfg):
            return path
        path = run_dir / f"config-resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    return save_config(cfg, path)


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
def build_loggers(run_dir: Path) -> list[Logger]:
    """CSV always (the demo and the tests read it); TensorBoard as well when ``tensorboard`` is installed.

    TensorBoard is an optional extra (``pip install 'swin-maskrcnn[tensorboard]'``), so training runs
    on an install without it and the run folder then has ``csv/`` only.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.insert(0, TensorBoardLogger(save_dir=str(run_dir), name="tensorboard"))
    else:
        log.info("tensorboard is not installed: logging to %s only", Path(run_dir) / "csv")
    return loggers


def estimate_checkpoint_bytes(model: torch.nn.Module, optim_type: str) -> int:
    """Size of one full Lightning checkpoint: the weights plus the optimizer's per-parameter state
    (AdamW: two fp32 moments, SGD: one momentum buffer) of the trainable parameters."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return weights + (2 if optim_type == "adamw" else 1) * trainable


def check_output_dir(cfg: TrainConfig, run_dir: Path, model: torch.nn.Module) -> None:
    """Before any step: the run folder can be created and written, and has room for a checkpoint.

    A ConfigError names ``runtime.out_dir`` and the cause (read-only, no permission, N MiB free
    against the estimated checkpoint size); too little room for every periodic checkpoint of the
    run is a warning, since ``runtime.keep_last_checkpoints`` or a cleanup may still make room.
    """
    need = estimate_checkpoint_bytes(model, cfg.optim.type)
    try:
        check_writable(run_dir / "checkpoints", need_bytes=need, what=f"runtime.out_dir ({cfg.runtime.out_dir}): run folder")
    except OutputWriteError as e:
        raise ConfigError(str(e)) from e
    rt = cfg.runtime
    periodic = cfg.optim.max_steps // rt.checkpoint_every_n_steps
    count = (periodic if rt.keep_last_checkpoints is None else min(periodic, rt.keep_last_checkpoints)) + 2
    free = shutil.disk_usage(run_dir).free
    if free < count * need:
        log.warning("%s: %.0f MiB free, the run's %d checkpoints need about %.0f MiB (%.0f MiB each); "
                    "set runtime.keep_last_checkpoints or free space", run_dir, free / 2**20, count,
                    count * need / 2**20, need / 2**20)


def build_model(cfg: TrainConfig, resume: Optional[Path], class_names: Optional[Sequence[str]] = None,
                run_dir: Optional[Path] = None, precision: Optional[str] = None) -> SwinMaskRCNN:
    """The detector, with the configured initial weights unless resuming (the checkpoint has them).
    ``precision``: the run's Lightning precision when already resolved (default: from the config)."""
    model = SwinMaskRCNN(cfg.model)
    if cfg.init.backbone_checkpoint and resume is None:
        load_imagenet_backbone(model.backbone, cfg.init.backbone_checkpoint)
    if cfg.init.checkpoint and resume is None:
        init_weights_from(model, cfg.init.checkpoint, class_names, cfg.init.class_map or None, run_dir,
                          map_classes=cfg.init.map_classes)
    if uses_channels_last(precision or cfg.runtime.precision, cfg.runtime.accelerator):
        channels_last_convolutions(model)
        log.info("bf16-mixed on the CPU: FPN, RPN and mask head convolutions in channels_last "
                 "(oneDNN's bf16 layout; modeling.acceleration.channels_last_convolutions)")
    compile_dense(model, cfg.runtime.compile)
    return model


@dataclass
class RunCallbacks:
    """The run's own callbacks; ``extra`` are the caller's (``train(callbacks=...)``)."""

    periodic: ModelCheckpoint
    evaluation: Optional[PeriodicEvaluation] = None
    best: Optional[BestCheckpoint] = None
    probe: Optional[ProbeMonitor] = None
    extra: list[L.Callback] = field(default_factory=list)
    stop: Optional[StopController] = None

    def all(self) -> list[L.Callback]:
        # the stop controller first: it decides at the end of a step, before validation and checkpoints
        own = [c for c in (self.stop, self.evaluation, self.probe, self.periodic, self.best) if c is not None]
        return own + list(self.extra)


def collapse_evidence(cfg: TrainConfig, train_ds: CocoInstanceDataset) -> CollapseEvidence:
    """The collapse diagnosis' recorder, with the anchor fit of the training boxes
    (:func:`~swin_maskrcnn.diagnostics.anchor_fit.fit_anchors`, computed once)."""
    fit = AnchorFit.from_fit(fit_anchors(train_ds, cfg.model, data_cfg=cfg.data))
    log.info("anchor fit: %d of %d training boxes have no anchor >= %g (model.rpn.anchor_scales=%s)",
             fit.unmatched, fit.total, fit.pos_iou_thr, fit.scales)
    return CollapseEvidence(window=cfg.runtime.collapse.loss_window, anchor=fit, images_per_step=cfg.data.batch_size)


def build_callbacks(
    cfg: TrainConfig, run_dir: Path, train_ds: CocoInstanceDataset, val_ds: Optional[CocoInstanceDataset],
    extra: Sequence[L.Callback] = (), stop: Optional[StopController] = None,
) -> RunCallbacks:
    """Validation (when there is a val set), the probe / collapse alarm, periodic and best checkpoints.
    Order matters: the evaluation runs before BestCheckpoint reads its metrics at the same step."""
    rt, ckpt_dir = cfg.runtime, run_dir / "checkpoints"
    evaluation = None
    if val_ds is not None:
        evaluation = PeriodicEvaluation(
            val_ds, every_n_steps=rt.val_every_n_steps, start_step=rt.val_start_step,
            max_images=rt.max_val_images, max_dets=rt.val_max_dets, batch_size=cfg.data.val_batch_size,
            out_dir=run_dir / "val", stop=stop,
        )
    probe = None
    if rt.probe_every_n_steps > 0:
        images, sizes = _probe_batch(cfg, train_ds, val_ds)
        detector = CollapseDetector.from_config(rt.collapse) if rt.collapse.enabled else None
        probe = ProbeMonitor(images, sizes, rt.probe_every_n_steps, detector, batch_size=cfg.data.val_batch_size,
                             evidence=collapse_evidence(cfg, train_ds))
    keep = rt.keep_last_checkpoints  # newest N by the logged "step" (= optimizer steps done), or all
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir, filename="step_{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=rt.checkpoint_every_n_steps, save_last="link",
        save_top_k=-1 if keep is None else keep, monitor=None if keep is None else "step", mode="max",
    )
    best = None
    if evaluation is not None:
        best = BestCheckpoint(evaluation, dirpath=ckpt_dir, filename="best", auto_insert_metric_name=False,
                              monitor="val/segm_AP", mode="max", save_top_k=1, enable_version_counter=False)
    return RunCallbacks(periodic=periodic, evaluation=evaluation, best=best, probe=probe, extra=list(extra), stop=stop)


def lightning_precision(precision: str, accelerator: str, flags: Optional[Any] = None) -> str:
    """``runtime.precision`` for Lightning: ``auto`` -> ``bf16-mixed`` where the accelerator's device
    computes bf16 natively (:func:`~swin_maskrcnn.modeling.acceleration.resolve_precision`; ``flags``:
    CPU flags for tests), else ``32-true``; any other value is passed through."""
    from ..modeling.acceleration import resolve_precision

    if precision != "auto":
        return precision
    device = run_device_type(accelerator)
    return "bf16-mixed" if resolve_precision("auto", device, flags=flags) == "bf16" else "32-true"


def run_device_type(accelerator: str) -> str:
    """The device type Lightning's ``accelerator`` trains on: ``cuda``, ``cpu`` or the name given
    (mps and others)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator in ("cpu", "auto"):
        return "cpu"
    return accelerator


def uses_channels_last(precision: str, accelerator: str, flags: Optional[Any] = None) -> bool:
    """Whether the run's convolutions train in channels_last: bf16-mixed on the CPU (where oneDNN's
    bf16 convolutions are NHWC; 1.25x faster step, docs/performance.md). fp32 and GPU runs keep NCHW."""
    return (lightning_precision(precision, accelerator, flags) == "bf16-mixed"
            and run_device_type(accelerator) == "cpu")


def build_trainer(cfg: TrainConfig, run_dir: Path, callbacks: Sequence[L.Callback],
                  precision: Optional[str] = None) -> L.Trainer:
    """Lightning Trainer of the run: one 'epoch' of max_steps optimizer steps (our sampler shards
    and orders the data), Lightning's devices/strategy/precision, atomic checkpoint writes."""
    rt = cfg.runtime
    return L.Trainer(
        accelerator=rt.accelerator,
        devices=rt.devices,
        num_nodes=rt.num_nodes,
        strategy=rt.strategy,
        precision=precision or lightning_precision(rt.precision, rt.accelerator),
        max_steps=cfg.optim.max_steps,
        max_epochs=-1,
        max_time=None if rt.max_minutes is None else timedelta(minutes=rt.max_minutes),
        accumulate_grad_batches=cfg.optim.accumulate_grad_batches,
        gradient_clip_val=cfg.model.losses.clip_grad_norm,
        gradient_clip_algorithm="norm",
        log_every_n_steps=rt.log_every_n_steps,
        logger=build_loggers(run_dir),
        callbacks=list(callbacks),
        enable_progress_bar=rt.progress_bar,
        enable_checkpointing=True,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
    )


def train(
    cfg: TrainConfig,
    resume: Optional[str] = None,
    name_hint: Optional[str] = None,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, Any]:
    """Train as configured.

    ``resume``: a Lightning ``.ckpt`` of an earlier run of this config, or that run's folder (or
    its ``checkpoints/``), which resumes from the newest complete checkpoint in it
    (:func:`~swin_maskrcnn.training.checkpoint_io.resolve_resume`). ``callbacks``: extra Lightning
    callbacks, run after the run's own.

    Returns the summary of :func:`run_summary`. Raises ConfigError (bad config, unwritable output,
    no usable checkpoint to resume) before training starts, and
    :class:`~swin_maskrcnn.training.nonfinite.NonFiniteTrainingError` when
    ``runtime.max_consecutive_nonfinite`` steps in a row had a non-finite loss or gradients.
    """
    t0 = time.time()
    if resume is None and cfg.runtime.requeue_on is not None:
        resume = _requeued_resume(cfg)
    resume_path = None
    if resume is not None:
        resume_path = Path(os.environ.get(RESUME_ENV) or resolve_resume(resume))
    run_dir = resolve_run_dir(cfg, None if resume_path is None else str(resume_path), name_hint)
    saved = {k: os.environ.get(k) for k in (RUN_DIR_ENV, RESUME_ENV)}
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks that Lightning launches during fit inherit these
    if resume_path is not None:
        os.environ[RESUME_ENV] = str(resume_path)
    try:
        return _train(cfg.model_copy(deep=True) if cfg.model.rpn.auto_anchors else cfg, resume_path, run_dir, t0, callbacks)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _requeued_resume(cfg: TrainConfig) -> Optional[str]:
    """With ``runtime.requeue_on``: this run's checkpoints folder when it holds a complete
    checkpoint (a requeued job runs the same command again), else None (a first start)."""
    rt = cfg.runtime
    if not rt.run_name:
        raise ConfigError(f"runtime.requeue_on={rt.requeue_on} needs runtime.run_name: the requeued job must find "
                          "this run's folder again")
    folder = Path(rt.out_dir) / rt.run_name / "checkpoints"
    if not folder.is_dir() or not any(checkpoint_step(p) is not None for p in folder.glob("*.ckpt")):
        return None
    log.warning("runtime.requeue_on=%s: %s holds checkpoints of this run: resuming from the newest complete one",
                rt.requeue_on, folder)
    return str(folder)


def _train(cfg: TrainConfig, resume: Optional[Path], run_dir: Path, t0: float,
           extra_callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    # first of all: from here on a stop signal is a request to stop cleanly, not a crash
    rt = cfg.runtime
    stop = StopController(rt.stop_signals, rt.requeue_on, rt.stop_step_grace_s, cfg.optim.accumulate_grad_batches)
    stop.checkpoint_dir = run_dir / "checkpoints"
    stop.install()
    try:
        return _run(cfg, resume, run_dir, t0, extra_callbacks, stop)
    finally:
        stop.restore()


def _run(cfg: TrainConfig, resume: Optional[Path], run_dir: Path, t0: float,
         extra_callbacks: Sequence[L.Callback], stop: StopController) -> dict[str, Any]:
    L.seed_everything(cfg.runtime.seed, workers=True, verbose=False)
    if cfg.runtime.keep_freed_memory:
        keep_freed_memory()  # before the first large tensor: reuse freed memory, no page faults per step
    check_hardware(cfg)  # start-up checks: before reading data, before writing anything
    train_ds, val_ds = build_datasets(cfg)
    check_resume(None if resume is None else str(resume), cfg, train_ds)
    anchor_fit = apply_auto_anchors(cfg, train_ds, resume)  # before the model: its RPN takes the fitted anchors
    precision = lightning_precision(cfg.runtime.precision, cfg.runtime.accelerator)  # resolved (and logged) once
    model = build_model(cfg, resume, train_ds.class_names, run_dir, precision)
    check_output_dir(cfg, run_dir, model)
    module = DetectionModule(cfg, train_ds.class_names, train_ds.cat_id_to_label, model=model)
    datamodule = DetectionDataModule(cfg, train_ds)
    callbacks = build_callbacks(cfg, run_dir, train_ds, val_ds, extra_callbacks, stop=stop)
    trainer = build_trainer(cfg, run_dir, callbacks.all(), precision)
    cfg_path = run_dir / "config.yaml"
    if trainer.is_global_zero:
        cfg_path = _write_config(cfg, run_dir)
        log.info("run folder %s (config %s)", run_dir, cfg_path)
    with warnings.catch_warnings():
        # We resume mid-"epoch" on purpose: the data order is restored by RunBatchSampler.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume))
        except StopRequested as e:
            # a step abandoned before its optimizer step (single process): the state is the previous step's
            stop.stop_now(trainer, e.signum, abandoned=e.what)
    evaluation = callbacks.evaluation
    if evaluation is not None and not stop.stopping and evaluation.is_due(trainer):
        # resumed at max_steps from a checkpoint whose final validation was abandoned: Lightning runs no
        # loop (so no on_train_start), the validation runs here
        evaluation.on_train_start(trainer, module)
        if callbacks.best is not None:
            callbacks.best.on_train_start(trainer, module)

    last_path = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last_path, weights_only=False)  # writes on rank 0 only
    final_model = run_dir / "model_final.pt"
    if trainer.is_global_zero:
        save_checkpoint(final_model, module.model, cfg, train_ds.class_names, train_ds.cat_id_to_label,
                        global_step=trainer.global_step)
    summary = run_summary(cfg, trainer, module, callbacks, run_dir, t0)
    _add_collapse_diagnosis(summary, callbacks, module)
    summary["data"] = {"train": train_ds.report.as_dict(), "val": None if val_ds is None else val_ds.report.as_dict()}
    if anchor_fit is not None:
        summary["anchor_fit"] = anchor_fit
    if summary["stopped_by"] is not None:
        summary["resume_command"] = resume_command(cfg_path, run_dir)
    if trainer.is_global_zero:
        if summary["stopped_by_signal"] and stop.stop_signum == stop.requeue_signum:
            summary["requeued"] = requeue_slurm_job()
        atomic_write(run_dir / "summary.json", lambda f: json.dump(json_ready(summary), f, indent=1))
        line = _summary_line(summary)
        if summary["stopped_by"] is None:
            log.info("%s", line)
        else:
            log.warning("%s", line)
            log.warning("resume with: %s", summary["resume_command"])
    return summary


def run_summary(cfg: TrainConfig, trainer: L.Trainer, module: DetectionModule, callbacks: RunCallbacks,
                run_dir: Path, t0: float) -> dict[str, Any]:
    """``run_dir``, ``last_checkpoint``, ``best_checkpoint`` / ``best_segm_AP`` (None without
    validation), ``final_model`` (our format), ``global_step``, ``stopped_by_time``,
    ``final_metrics`` (last validation ``val/*`` and last training figures ``train/*``),
    ``collapse_alarm_steps``, ``nonfinite`` (``skipped_steps`` and the first events: step, reason,
    image ids, loss terms), ``world_size``, ``wall_time_s``; how the run ended: ``stopped_by``
    (None when it finished, a signal name such as ``"SIGTERM"``, or ``"max_minutes"``),
    ``stopped_by_signal``, ``abandoned`` (``"step"`` / ``"validation"`` / None), ``max_steps`` and
    ``exit_code`` (128 + the signal number after a signal, else 0)."""
    final_metrics: dict[str, float] = dict(module.last_train_metrics)  # train/* of the last step
    evaluation, best, probe = callbacks.evaluation, callbacks.best, callbacks.probe
    if evaluation is not None and evaluation.last_metrics is not None:
        final_metrics.update({f"val/{k}": v for k, v in evaluation.last_metrics.items()})
    best_path = best_score = None
    if best is not None and best.best_model_path:
        best_path = best.best_model_path
        best_score = None if best.best_model_score is None else float(best.best_model_score)
    rt = cfg.runtime
    step = int(trainer.global_step)
    stop = callbacks.stop
    signum = None
    if stop is not None and stop.stopping and (step < cfg.optim.max_steps or stop.abandoned is not None):
        signum = stop.stop_signum  # (a signal in the last step, with nothing abandoned, is a finished run)
    stopped_by = signal_name(signum) if signum is not None else (
        "max_minutes" if rt.max_minutes is not None and step < cfg.optim.max_steps else None)
    return {
        "run_dir": str(run_dir),
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "best_checkpoint": best_path,
        "best_segm_AP": best_score,
        "final_model": str(run_dir / "model_final.pt"),
        "global_step": int(trainer.global_step),
        "max_steps": int(cfg.optim.max_steps),
        "stopped_by": stopped_by,
        "stopped_by_signal": signum is not None,
        "stopped_by_time": stopped_by == "max_minutes",
        "abandoned": None if signum is None else stop.abandoned,
        "exit_code": stop_exit_code(signum),
        "final_metrics": final_metrics,
        "collapse_alarm_steps": [] if probe is None else list(probe.alarm_steps),
        "nonfinite": module.nonfinite.summary(),
        "world_size": int(trainer.world_size),
        "wall_time_s": time.time() - t0,
    }


#: a final validation AP at or below this counts as "about zero" (the run summary then says why)
COLLAPSED_AP = 0.01


def _add_collapse_diagnosis(summary: dict[str, Any], callbacks: RunCallbacks, module: DetectionModule) -> None:
    """``summary["collapse_diagnosis"]``: the ranked causes when the final validation AP is about zero."""
    m = summary["final_metrics"]
    aps = [m[k] for k in ("val/bbox_AP", "val/segm_AP") if k in m and m[k] is not None and not math.isnan(m[k])]
    probe = callbacks.probe
    if not aps or max(aps) > COLLAPSED_AP or probe is None or probe.evidence is None:
        return
    lines = probe.diagnosis(module)
    summary["collapse_diagnosis"] = lines
    if module.trainer.is_global_zero:
        log.warning("final validation AP %.4f is about zero. Likely causes, most likely first:\n  %s", max(aps),
                    "\n  ".join(lines))


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _summary_line(s: dict[str, Any]) -> str:
    m = s["final_metrics"]
    alarms = s["collapse_alarm_steps"]
    if s["stopped_by"] is None:
        head = f"finished {s['global_step']} steps"
    else:
        by = s["stopped_by"] if s["stopped_by"] != "max_minutes" else "runtime.max_minutes"
        head = f"stopped by {by} at step {s['global_step']} of {s['max_steps']}"
        if s.get("abandoned"):
            head += f" ({s['abandoned']} in progress abandoned)"
    return (
        f"{head} in {s['wall_time_s'] / 60:.1f} min | loss {_fmt(m.get('train/loss'))} | "
        f"val bbox AP {_fmt(m.get('val/bbox_AP'))} segm AP {_fmt(m.get('val/segm_AP'))} | "
        f"best segm AP {_fmt(s['best_segm_AP'])} | collapse alarms {len(alarms)} | "
        f"non-finite steps skipped {s['nonfinite']['skipped_steps']} | run {s['run_dir']}"
    )
