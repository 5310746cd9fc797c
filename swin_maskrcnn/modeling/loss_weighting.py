"""Learned loss weights by homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

Each loss component i gets a learned log-variance s_i (initialised at 0, i.e. weight 1) and
contributes ``exp(-s_i) * L_i + s_i``: a noisy component lowers its own weight, and the ``+ s_i``
term stops every weight from collapsing to zero. Off by default (``losses.learned_loss_weights``);
when on, the detector holds it as ``learned_loss_weights``, which is also the optimiser's
no-weight-decay key (decay would pull every s_i to 0, i.e. every weight to 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")


class LearnedLossWeights(nn.Module):
    """Input: the loss dict with every name in ``names`` (scalars). Output: the same keys re-weighted
    (with graph into ``log_vars``) and the current weights ``weight_<name>`` = exp(-s_i), detached."""

    def __init__(self, names: tuple[str, ...] = LOSS_NAMES) -> None:
        super().__init__()
        self.names = tuple(names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        out = dict(losses)
        stats = {}
        for i, name in enumerate(self.names):
            s = self.log_vars[i]
            out[name] = torch.exp(-s) * losses[name] + s
            stats[f"weight_{name[len('loss_'):]}"] = torch.exp(-s).detach()
        return out, stats
