"""Strict state-dict loading for every format (ours, Lightning, mmdet, a training init)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["load_state_dict_strict"]


def load_state_dict_strict(model: torch.nn.Module, sd: Mapping[str, Tensor], source: str = "state_dict") -> None:
    """Load with every key placed and every model key present; otherwise raise listing the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shape_bad:
            parts.append(
                "shape mismatches: " + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shape_bad)
            )
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
