"""Start-up checks of a training run that need the machine or a checkpoint, run before any data is
read or anything is written: a config that asks for hardware this machine lacks, and a ``--resume``
checkpoint that cannot be read or belongs to a different class set. Each raises
:class:`~swin_maskrcnn.training.config.ConfigError` (or the checkpoint's
:class:`~swin_maskrcnn.checkpoint.mmdet.CheckpointError`) saying which keys to set.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from ..checkpoint.loader import read_checkpoint
from ..checkpoint.safe_load import CheckpointError
from .config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

__all__ = ["check_hardware", "check_resume", "cpu_settings"]


def _device_count(devices: Any) -> Optional[int]:
    """Devices asked for per node: an int (-1 = all), a list of indices, or 'auto' (None)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return None


def cpu_settings(cfg: TrainConfig, devices: int = 1) -> str:
    """The ``key=value`` overrides that run ``cfg`` on ``devices`` CPU processes (1: no DDP) with
    the same global batch (data.batch_size x devices x nodes x accumulation) where it divides."""
    rt, d, o = cfg.runtime, cfg.data, cfg.optim
    asked = _device_count(rt.devices) or 1
    global_batch = d.batch_size * asked * rt.num_nodes * o.accumulate_grad_batches
    keys = ["runtime.accelerator=cpu", f"runtime.devices={devices}"]
    if rt.num_nodes != 1:
        keys.append("runtime.num_nodes=1")
    if devices == 1 and rt.strategy != "auto":
        keys.append("runtime.strategy=auto")
    if rt.precision == "16-mixed":
        keys.append("runtime.precision=32-true")
    per_step = d.batch_size * devices
    if global_batch != per_step and global_batch % per_step == 0:
        keys.append(f"optim.accumulate_grad_batches={global_batch // per_step}")
        note = f" (keeps the global batch of {global_batch} = data.batch_size {d.batch_size} x accumulation)"
    else:
        note = ""
    return " ".join(keys) + note


def check_hardware(cfg: TrainConfig) -> None:
    """ConfigError naming the keys to set when ``runtime`` asks for an accelerator, or more devices,
    than this machine has (Lightning would stop with a MisconfigurationException traceback)."""
    rt = cfg.runtime
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked = _device_count(rt.devices)
    if rt.accelerator in ("gpu", "cuda"):
        if n_gpu == 0:
            raise ConfigError(
                f"runtime.accelerator={rt.accelerator} runtime.devices={rt.devices!r} asks for GPUs, but torch sees "
                f"none on this machine (torch.cuda.is_available() is False). To train on the CPU set: {cpu_settings(cfg)}"
            )
        if isinstance(rt.devices, list) and max(rt.devices) >= n_gpu:
            raise ConfigError(f"runtime.devices={rt.devices} names GPU indices, but this machine has {n_gpu} GPU(s) "
                              f"(indices 0..{n_gpu - 1})")
        if asked is not None and asked > n_gpu:
            raise ConfigError(
                f"runtime.devices={rt.devices} asks for {asked} GPUs, but this machine has {n_gpu}: set "
                f"runtime.devices={n_gpu} (and optim.accumulate_grad_batches to keep the global batch of "
                f"{cfg.data.batch_size * asked * rt.num_nodes * cfg.optim.accumulate_grad_batches})"
            )
    elif rt.accelerator == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"runtime.accelerator=mps, but the Apple MPS backend is not available here. "
                              f"To train on the CPU set: {cpu_settings(cfg)}")
    elif rt.accelerator == "cpu" and isinstance(rt.devices, list):
        raise ConfigError(f"runtime.devices={rt.devices} is a list of GPU indices, but runtime.accelerator=cpu "
                          "counts processes: set runtime.devices=1 (or N CPU processes)")


def check_resume(resume: Optional[str], cfg: TrainConfig, train_dataset: Any) -> None:
    """The ``--resume`` checkpoint must be one of our Lightning ``.ckpt`` files, readable with
    ``torch.load(weights_only=True)`` (so a code-running pickle never runs), of the same
    ``model.num_classes`` and category ids as the training annotations."""
    if resume is None:
        return
    _, meta = read_checkpoint(resume)  # FileNotFoundError / CheckpointError name the file
    if meta["source"] != "lightning":
        raise CheckpointError(
            f"--resume {resume}: a {meta['source']} checkpoint holds weights only, not a training state; "
            f"--resume needs a .ckpt written by 'train' (checkpoints/last.ckpt). To start from its weights, "
            f"set init.checkpoint={resume}"
        )
    model_cfg = meta.get("model_config") or {}
    n_ckpt = model_cfg.get("num_classes")
    if n_ckpt is not None and int(n_ckpt) != cfg.model.num_classes:
        raise ConfigError(
            f"--resume {resume} was trained with model.num_classes={n_ckpt}, but this run has "
            f"model.num_classes={cfg.model.num_classes} ({train_dataset.ann_file}): resume a run of the same "
            "classes, or start a new run with init.checkpoint to fine-tune from its weights"
        )
    mapping = meta.get("cat_id_to_label")
    if mapping is not None:
        mapping = {int(k): int(v) for k, v in mapping.items()}
        if mapping != train_dataset.cat_id_to_label:
            raise ConfigError(
                f"--resume {resume} maps category ids {sorted(mapping)[:10]} but {train_dataset.ann_file} has "
                f"{train_dataset.cat_ids[:10]}: the labels would mean different classes"
            )
