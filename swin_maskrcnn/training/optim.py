"""Optimiser with mmdet's parameter-wise weight decay, and the per-step lr schedule.

Parameter groups (mmengine ``DefaultOptimWrapperConstructor`` with the Swin configs'
``paramwise_cfg.custom_keys = {absolute_pos_embed, relative_position_bias_table, norm: decay_mult 0}``):

* a parameter gets weight decay 0 when ANY no-decay key is a substring of its full name
  (``backbone.stages.0.blocks.0.norm1.weight``, ``backbone.norm3.bias``,
  ``backbone.patch_embed.norm.weight``, ``backbone.stages.0.downsample.norm.weight``,
  ``...attn.w_msa.relative_position_bias_table``);
* every other trainable parameter, biases included, gets ``weight_decay`` (mmdet sets no
  ``bias_decay_mult``);
* frozen parameters (``requires_grad=False``) are left out of the optimiser.

The schedule is a ``LambdaLR`` stepped once per optimizer step (Lightning ``interval="step"``);
:func:`lr_factor` is its closed form (see :class:`~swin_maskrcnn.training.config.OptimConfig`).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig

log = logging.getLogger(__name__)

__all__ = ["build_param_groups", "build_optimizer", "lr_factor", "build_scheduler"]


def _matches(name: str, keys: Sequence[str]) -> bool:
    return any(k in name for k in keys)


def build_param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str]) -> list[dict]:
    """Two groups, ``decay`` and ``no_decay`` (empty ones omitted), of the trainable parameters."""
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups["no_decay" if _matches(name, no_decay_keys) else "decay"].append(p)
    out = []
    if groups["decay"]:
        out.append({"params": groups["decay"], "weight_decay": float(weight_decay), "group_name": "decay"})
    if groups["no_decay"]:
        out.append({"params": groups["no_decay"], "weight_decay": 0.0, "group_name": "no_decay"})
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (mmdet's Swin recipe) or SGD over :func:`build_param_groups`."""
    groups = build_param_groups(model, cfg.weight_decay, cfg.no_decay_keys)
    n = {g["group_name"]: sum(p.numel() for p in g["params"]) for g in groups}
    log.info(
        "optimizer %s lr=%g wd=%g: %d params with decay, %d without (keys %s)",
        cfg.type, cfg.lr, cfg.weight_decay, n.get("decay", 0), n.get("no_decay", 0), cfg.no_decay_keys,
    )
    if cfg.type == "adamw":
        # foreach: one fused multi-tensor update instead of a Python loop per tensor (torch only
        # defaults to it on CUDA; on CPU the per-tensor loop dominated small models' steps).
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
        )
    if cfg.type == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)
    raise ValueError(f"optim.type {cfg.type!r} is not supported")


def warmup_factor(step: int, warmup_iters: int, start_factor: float) -> float:
    """mmengine ``LinearLR(start_factor, begin=0, end=warmup_iters)``: reaches 1 at step W - 1."""
    if warmup_iters <= 0 or step >= warmup_iters - 1:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / (warmup_iters - 1)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """lr(step) / cfg.lr for 0-based optimizer step ``step``."""
    w = warmup_factor(step, cfg.warmup_iters, cfg.warmup_start_factor)
    if cfg.schedule == "multistep":
        return w * cfg.gamma ** sum(1 for m in cfg.milestones if step >= m)
    # cosine from lr at the end of warmup to min_lr at max_steps
    floor = cfg.min_lr / cfg.lr
    start = cfg.warmup_iters
    if step < start:
        return w
    span = max(cfg.max_steps - start, 1)
    progress = min(max(step - start, 0), span) / span
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> LambdaLR:
    """Per-step ``LambdaLR`` implementing :func:`lr_factor` for every group."""

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    return LambdaLR(optimizer, lr_lambda=factor)

