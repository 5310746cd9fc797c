"""Typed training configuration: ``TrainConfig`` and YAML loading with ``key=value`` overrides.

A training run is described by one :class:`TrainConfig` with the sections

* ``model``   -- :class:`~swin_maskrcnn.modeling.config.ModelConfig` (architecture, heads, ``losses``),
* ``data``    -- annotation files, image folders, pipeline, batching, data-order seed,
* ``optim``   -- optimiser, parameter-wise weight decay, warmup and lr schedule (in optimizer steps),
* ``runtime`` -- devices/strategy/precision, validation, checkpoints, logging, probe, collapse alarm,
* ``init``    -- optional weights to start from.

Every section forbids unknown keys, and every value is range-checked; errors raise
:class:`ConfigError` whose message names the full dotted key (``optim.lr``, ``model.losses.eps``).

YAML files
----------
``load_config(path, overrides)`` reads a YAML mapping. Two composition mechanisms exist:

* ``extends: other.yaml`` (or a list of files), resolved relative to the including file. The
  listed files are merged first, in order, then the including file's own keys on top. Mappings
  merge key by key; lists and scalars are replaced.
* ``layers=[...]`` (CLI ``--losses FILE``, repeatable): partial YAML files merged on top of
  the config after it is read and before the overrides, e.g. the design's tuned losses::

      swin-maskrcnn train --config configs/swin_t_coco_1x.yaml --losses configs/losses/seed.yaml

  or, equivalently, in a user config: ``extends: [swin_t_coco_1x.yaml, losses/seed.yaml]``.

Overrides are ``dotted.key=value`` strings; ``value`` is parsed with ``yaml.safe_load`` (so
``optim.lr=2e-4``, ``data.scale=[1024,640]``, ``model.losses.clip_grad_norm=null`` all work).
An override of a key that does not exist is an error naming the key.

``num_classes`` always counts foreground classes (background is the extra index C). It must equal
the number of categories of the training annotation file; :func:`check_num_classes` checks this at
start-up, before any model is built.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..checkpoint.compat import upgrade_no_decay_keys, upgrade_train_config
from ..errors import ConfigError
from ..io_utils import atomic_write
from ..signals import DEFAULT_STOP_SIGNALS, parse_signal, signal_name
from ..modeling.config import CompileMode, ModelConfig, StrictModel

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "CollapseConfig",
    "RuntimeConfig",
    "InitConfig",
    "TrainConfig",
    "load_config",
    "load_yaml",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "save_config",
    "check_num_classes",
]


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
Scale = tuple[int, int]


class DataConfig(StrictModel):
    """Where the data is and how it is batched. Defaults are mmdet's Swin Mask R-CNN 1x values."""

    train_ann: str = Field(description="COCO json of the training set")
    train_images: str = Field(description="folder the training json's file_name entries are relative to")
    val_ann: Optional[str] = Field(None, description="COCO json of the validation set (None: no validation)")
    val_images: Optional[str] = None
    transforms: Literal["1x", "ms_crop_3x", "none"] = Field(
        "1x", description="training pipeline: mmdet 1x (resize+flip), 3x multi-scale+crop, or none"
    )
    scale: Scale = Field((1333, 800), description="(long, short) max sides of the 1x keep-ratio resize")
    ms_scales: Optional[list[Scale]] = Field(
        None, description="ms_crop_3x resize choices (None: mmdet's short side 480..800 step 32, long <= 1333)"
    )
    crop_pre_scales: Optional[list[Scale]] = Field(
        None, description="ms_crop_3x pre-crop resize choices (None: mmdet's short side 400/500/600)"
    )
    crop_size: Scale = Field((384, 600), description="ms_crop_3x absolute_range crop size (min, max)")
    flip_prob: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(2, ge=1, description="images per device per micro-batch (mmdet: 2 x 8 GPUs)")
    val_batch_size: int = Field(1, ge=1)
    num_workers: int = Field(2, ge=0)
    group_by_aspect_ratio: bool = Field(True, description="mmdet's AspectRatioBatchSampler grouping")
    filter_empty_gt: bool = Field(True, description="drop training images without annotations (mmdet)")
    min_size: int = Field(32, ge=0, description="drop training images whose shorter side is below this (mmdet)")
    seed: int = Field(0, ge=0, description="data order and augmentation seed")
    repeat_factor_threshold: Optional[float] = Field(
        None,
        gt=0,
        description="class-balanced repeat-factor sampling (LVIS, detectron2's RepeatFactorTrainingSampler): each "
        "training image is visited r = max over its classes c of max(1, sqrt(t / f(c))) times per data epoch on "
        "average (f(c): fraction of training images with a non-crowd instance of c; stochastic rounding per epoch "
        "from data.seed). None: off (every image once per epoch). detectron2's LVIS value: 0.001",
    )
    crowd: Literal["drop", "ignore"] = Field(
        "drop",
        description="crowd annotations (iscrowd=1, or \"ignore\": 1) in training: 'drop' leaves them out (their "
        "area counts as background); 'ignore' makes their boxes the targets' ignore_boxes, carried through every "
        "transform, so anchors/proposals inside them are not trained on when model.rpn.ignore_iof_thr / "
        "model.roi.ignore_iof_thr > 0 (mmdet: 0.5 is usual). Evaluation is unchanged (COCOeval ignores crowds)",
    )
    bad_images: Literal["error", "skip"] = Field(
        "error",
        description="an image that is missing, empty, not an image, truncated or not of the JSON's size (found by the "
        "start-up header read): 'error' stops before training naming every such image; 'skip' leaves them out, "
        "logged and counted in the run summary",
    )

    @field_validator("scale", "crop_size")
    @classmethod
    def _positive_pair(cls, v: Optional[Scale]) -> Optional[Scale]:
        if v is not None and (v[0] < 1 or v[1] < 1):
            raise ValueError(f"both sides must be >= 1, got {list(v)}")
        return v

    @field_validator("ms_scales", "crop_pre_scales")
    @classmethod
    def _positive_pairs(cls, v: Optional[list[Scale]]) -> Optional[list[Scale]]:
        if v is not None:
            if not v:
                raise ValueError("needs at least one scale (or null for mmdet's default)")
            for s in v:
                if s[0] < 1 or s[1] < 1:
                    raise ValueError(f"both sides must be >= 1, got {list(s)}")
        return v

    @model_validator(mode="after")
    def _val_pair(self) -> "DataConfig":
        if (self.val_ann is None) != (self.val_images is None):
            raise ValueError("data.val_ann and data.val_images must be given together (or both null)")
        return self


class OptimConfig(StrictModel):
    """Optimiser and schedule; every step count is in OPTIMIZER steps (after accumulation).

    lr at step t (0-based) = lr * warmup(t) * decay(t), with

    * warmup(t) = start_factor + (1 - start_factor) * min(t, W - 1) / (W - 1) for W = warmup_iters > 1
      (mmengine ``LinearLR(begin=0, end=W)``: full lr from step W - 1 on); 1 when W = 0;
    * multistep: decay(t) = gamma ** (number of milestones m with t >= m);
    * cosine: decay(t) = 1 for t < W, then min_lr/lr + (1 - min_lr/lr) * (1 + cos(pi * (t - W) / (max_steps - W))) / 2.
    """

    type: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0, le=10)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    eps: float = Field(1e-8, gt=0, le=1e-2, description="AdamW only")
    weight_decay: float = Field(0.05, ge=0, le=1)
    no_decay_keys: list[str] = Field(
        default_factory=lambda: [
            "absolute_pos_embed", "relative_position_bias_table", "norm", "learned_loss_weights", "cpb_mlp", "logit_scale"
        ],
        description="a parameter whose full name CONTAINS any of these gets weight_decay 0 (mmdet custom_keys)",
    )
    warmup_iters: int = Field(1000, ge=0)
    warmup_start_factor: float = Field(0.001, gt=0, le=1)
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [58640, 80630], description="multistep decay steps")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0, description="cosine floor")
    max_steps: int = Field(87960, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must be in [0, 1), got {list(v)}")
        return v

    @field_validator("no_decay_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        if any(not k for k in v):
            raise ValueError("empty key (it would match every parameter)")
        return upgrade_no_decay_keys(v)


class CollapseConfig(StrictModel):
    """The collapse alarm (see ``monitoring.CollapseDetector``): it fires when the training loss keeps
    falling while the probe's predictions (or the RoI foreground accuracy) have collapsed."""

    enabled: bool = True
    loss_window: int = Field(50, ge=2, description="training steps in each of the two compared loss averages")
    min_relative_drop: float = Field(0.0, ge=0, lt=1, description="recent avg < (1 - this) * previous avg = 'falling'")
    min_preds_per_image: float = Field(0.1, ge=0, description="probe predictions/image at or below this = collapsed")
    min_fg_acc: float = Field(5.0, ge=0, le=100, description="recent RoI fg accuracy (%) below this = collapsed")
    grace_steps: int = Field(2000, ge=0, description="no alarm before this step (a fresh head predicts nothing yet)")
    patience: int = Field(2, ge=1, description="consecutive probes that must agree before the alarm fires")


class RuntimeConfig(StrictModel):
    """Where and how the run executes; passed straight to ``lightning.Trainer`` where it applies."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, Literal["auto"], list[int]] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_find_unused_parameters_true, ...")
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "auto"] = Field(
        "32-true", description="Lightning precision; auto: bf16-mixed where the run's device computes bf16 natively "
        "(a CPU with AMX-BF16 / AVX512-BF16, a CUDA GPU with bf16), else 32-true (logged; see "
        "swin_maskrcnn.modeling.acceleration.resolve_precision)")
    compile: Optional[CompileMode] = Field(
        None, description="torch.compile the backbone and FPN with this mode (None: eager); see docs/performance.md"
    )
    keep_freed_memory: bool = Field(
        True, description="keep freed memory in the process heap instead of returning it to the kernel (glibc "
        "malloc: mmap off, no trimming), so large tensors are reused without page faults; see swin_maskrcnn.runtime "
        "and docs/performance.md (a training step ~28 % faster on CPU)",
    )
    val_every_n_steps: int = Field(7330, ge=1, description="validate every N optimizer steps (mmdet: every epoch)")
    val_start_step: int = Field(0, ge=0, description="no validation before this step")
    max_val_images: Optional[int] = Field(None, ge=1, description="validate on the first N images (None: all)")
    val_max_dets: list[int] = Field(
        default_factory=lambda: [1, 10, 100],
        description="COCOeval maxDets of validation during training; unset, it follows model.max_instances "
        "([1, 100, N] above 100, as evaluate does)",
    )
    checkpoint_every_n_steps: int = Field(7330, ge=1)
    keep_last_checkpoints: Optional[int] = Field(
        None, ge=1,
        description="keep only the newest N periodic step_*.ckpt files (None: keep all); last.ckpt and best.ckpt stay",
    )
    log_every_n_steps: int = Field(50, ge=1)
    probe_every_n_steps: int = Field(500, ge=0, description="prediction-count probe period (0: off)")
    probe_images: int = Field(4, ge=1, description="images in the fixed probe batch (first val, else train, images)")
    collapse: CollapseConfig = Field(default_factory=CollapseConfig)
    out_dir: str = Field("runs", description="runs are written to out_dir/run_name")
    run_name: Optional[str] = Field(None, description="None: <config name or variant>_<timestamp>")
    seed: int = Field(0, ge=0, description="model init and per-step sampling seed")
    progress_bar: bool = True
    max_consecutive_nonfinite: int = Field(
        20, ge=1,
        description="a step whose loss or gradients are not finite is skipped (no parameter update; under 16-mixed "
        "the GradScaler skips it and lowers its scale); after this many skipped steps in a row the run stops with a "
        "diagnosis (learning rate, precision, the batches' image ids)",
    )
    max_minutes: Optional[float] = Field(
        None, gt=0,
        description="wall-clock budget: stop training after this many minutes (in all, over resumes) even before optim.max_steps "
        "(Lightning's max_time; the lr schedule stays the step-based one, so it is cut short). last.ckpt and "
        "model_final.pt are still written; the summary says stopped_by_time",
    )

    stop_signals: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STOP_SIGNALS),
        description="signals that stop training cleanly: the current optimizer step finishes (or is abandoned after "
        "stop_step_grace_s), last.ckpt, model_final.pt and summary.json are written, the resume command is printed "
        "and the command exits with 128 + the signal number; a second Ctrl-C stops at once. [] leaves the signals "
        "to Lightning (SIGTERM then ends the run with status 0 and nothing saved)",
    )
    requeue_on: Optional[str] = Field(
        None,
        description="SLURM: on this signal (e.g. SIGUSR1 with #SBATCH --signal=USR1@90) save as for a stop, then "
        "'scontrol requeue' the job; a start with the same runtime.run_name resumes from the run's newest complete "
        "checkpoint by itself (docs/distributed.md)",
    )
    stop_step_grace_s: float = Field(
        5.0, ge=0,
        description="after a stop signal, a step still in its forward/backward pass this many seconds later is "
        "abandoned (single process; the checkpoint is then the state after the previous step); 0: at once",
    )

    @field_validator("stop_signals")
    @classmethod
    def _stop_signals(cls, v: list[str]) -> list[str]:
        names = []
        for name in v:
            names.append(signal_name(parse_signal(name)))  # ValueError names the bad entry
        if len(set(names)) != len(names):
            raise ValueError(f"repeated signal in {v}")
        return names

    @field_validator("requeue_on")
    @classmethod
    def _requeue_on(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else signal_name(parse_signal(v))

    @model_validator(mode="after")
    def _requeue_is_a_stop_signal(self) -> "RuntimeConfig":
        if self.requeue_on is not None and self.requeue_on not in self.stop_signals:
            raise ValueError(f"requeue_on={self.requeue_on} must be one of stop_signals {self.stop_signals}")
        return self

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: Union[int, str, list[int]]) -> Union[int, str, list[int]]:
        if isinstance(v, int) and v < 1 and v != -1:
            raise ValueError(f"devices must be >= 1, -1 (all), 'auto' or a list of indices, got {v}")
        if isinstance(v, list) and (not v or any(i < 0 for i in v)):
            raise ValueError(f"device index list must be non-empty and >= 0, got {v}")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if "spawn" in v or "fork" in v or "notebook" in v:
            raise ValueError(
                f"{v!r} trains in child processes and loses the run's results; use 'ddp' (each rank runs "
                "the whole command, as with torchrun or the swin-maskrcnn CLI)"
            )
        return v

    @field_validator("val_max_dets")
    @classmethod
    def _max_dets(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(d < 1 for d in v) or sorted(set(v)) != v:
            raise ValueError(f"needs 3 increasing positive counts (COCOeval summarises 3), got {v}")
        return v


class InitConfig(StrictModel):
    """Weights to start training from (the optimiser and schedule still start at step 0)."""

    backbone_checkpoint: Optional[str] = Field(
        None,
        description=(
            "ImageNet Swin weights for the backbone, as mmdet's recipes start: an original-repo file "
            "(swin_tiny_patch4_window7_224.pth, {'model': ...}) or a torchvision swin_t/s/b state_dict; "
            "for a Swin V2 backbone a torchvision swin_v2_t/s/b state_dict or an original Swin V2 release "
            "file (q_bias/v_bias); renamed (V1: patch-merging-permuted) on load (swin_maskrcnn.checkpoint.imagenet)"
        ),
    )

    checkpoint: Optional[str] = Field(
        None,
        description=(
            "detector weights: an mmdet checkpoint (.pth), our own format (.pt) or a Lightning .ckpt of this "
            "project. When its class count differs from model.num_classes, the class-specific layers "
            "(fc_cls, fc_reg, conv_logits) keep their fresh init; every other key must match. When the "
            "checkpoint carries class names, each dataset class found there by name keeps its rows "
            "(fc_cls, background row, fc_reg, conv_logits); the others start fresh (transfer_report.txt)."
        ),
    )
    class_map: dict[str, str] = Field(
        default_factory=dict,
        description="renamed classes for the by-name transfer from init.checkpoint: {dataset_name: checkpoint_name}",
    )
    map_classes: bool = Field(
        True,
        description=(
            "copy class-specific rows from init.checkpoint by class name (true); false: the class-specific "
            "layers (fc_cls, fc_reg, conv_logits) all start fresh, even where names or counts match, "
            "and every other key is loaded (a fine-tuning baseline: 'fresh heads')"
        ),
    )


class TrainConfig(StrictModel):
    """A whole training run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    init: InitConfig = Field(default_factory=InitConfig)

    @model_validator(mode="before")
    @classmethod
    def _older_keys(cls, data: Any) -> Any:
        """Keys of older configs and checkpoints (``data.test_scale``) read as today's (:mod:`swin_maskrcnn.checkpoint.compat`)."""
        return upgrade_train_config(data)

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        o = self.optim
        if o.schedule == "multistep":
            ms = o.milestones
            if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
                raise ValueError(f"optim.milestones must be strictly increasing positive steps, got {ms}")
            if ms and ms[-1] >= o.max_steps:
                raise ValueError(
                    f"optim.milestones {ms} must all be below optim.max_steps={o.max_steps} "
                    "(scale the milestones with max_steps, or drop them)"
                )
        if o.schedule == "cosine":
            if o.warmup_iters >= o.max_steps:
                raise ValueError(
                    f"optim.warmup_iters={o.warmup_iters} must be below optim.max_steps={o.max_steps} for cosine"
                )
            if o.min_lr > o.lr:
                raise ValueError(f"optim.min_lr={o.min_lr} is above optim.lr={o.lr}")
        return self

    @model_validator(mode="after")
    def _val_max_dets_follow_max_instances(self) -> "TrainConfig":
        """Validation during training counts as many detections as ``model.max_instances`` keeps (as
        ``evaluate`` does) unless ``runtime.val_max_dets`` is given; a new runtime section, never changed in place."""
        follow = self.model.eval_max_dets()
        if follow is not None and "val_max_dets" not in self.runtime.model_fields_set:
            self.__dict__["runtime"] = self.runtime.model_copy(update={"val_max_dets": follow})
        return self


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def _format_validation_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (not a field of this section)"
        elif err.get("type") == "missing":
            msg = "required key is missing"
        inp = err.get("input")
        shown = "" if err.get("type") in ("missing",) or isinstance(inp, dict) else f" (got {inp!r})"
        lines.append(f"{loc}: {msg}{shown}" if loc else f"{msg}")
    return ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Validate a plain mapping into a :class:`TrainConfig`; errors name the dotted keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_validation_error(exc, source) from None


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------
def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: Union[str, Path], _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its ``extends:`` files merged underneath (recursively)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, real))
        raise ConfigError(f"circular 'extends' in config files: {chain}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'extends' must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for b in bases:
        bp = Path(b)
        if not bp.is_absolute():
            bp = path.parent / bp
        merged = _deep_merge(merged, load_yaml(bp, (*_stack, real)))
    return _deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (value parsed with ``yaml.safe_load``) to a nested mapping.

    Intermediate keys that do not exist are created (validation then reports them as unknown keys);
    a key that runs through a non-mapping value is an error naming the key.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"override {item!r}: empty key component in {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {key}: {'.'.join(parts[: i + 1])} is a value ({nxt!r}), not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(
    path: Union[str, Path],
    overrides: Sequence[str] = (),
    layers: Sequence[Union[str, Path]] = (),
) -> TrainConfig:
    """Read a YAML config, merge ``layers`` (partial YAML files) on top, apply ``overrides``, validate.

    Raises :class:`ConfigError` naming the full dotted key of every unknown or invalid value.
    """
    data = load_yaml(path)
    for layer in layers:
        data = _deep_merge(data, load_yaml(layer))
    data = apply_overrides(data, overrides)
    source = str(path)
    if layers:
        source += " + " + " + ".join(str(x) for x in layers)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return config_from_dict(data, source)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The fully resolved config as plain YAML/JSON types (tuples become lists)."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: TrainConfig) -> str:
    """Resolved config as YAML text; ``load_config`` of it gives back an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def save_config(cfg: TrainConfig, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    path = Path(path)
    _atomic_write_text(path, "# resolved swin-maskrcnn training config\n" + dump_config(cfg))
    return path


# ------------------------------------------------------------------------------------------------
# start-up checks
# ------------------------------------------------------------------------------------------------
def check_num_classes(cfg: TrainConfig, dataset: Any, role: str = "training") -> None:
    """``model.num_classes`` (foreground classes) must equal the dataset's category count."""
    n_data = len(dataset.class_names)
    if cfg.model.num_classes == n_data + 1:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} is the {role} annotations' {n_data} categories + 1: "
            f"num_classes counts foreground classes only (the background row is added by the model): "
            f"set model.num_classes={n_data}"
        )
    if cfg.model.num_classes != n_data:
        names = ", ".join(dataset.class_names[:10]) + (", ..." if n_data > 10 else "")
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the {role} annotations "
            f"{getattr(dataset, 'ann_file', '')} have {n_data} categories ({names}); "
            f"num_classes counts foreground classes only: set model.num_classes={n_data}"
        )
