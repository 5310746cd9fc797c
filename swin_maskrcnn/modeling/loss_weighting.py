"""Dynamic loss weighting by learned homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

Each loss component i gets a learned log-variance s_i (initialised at 0, i.e. weight 1) and
contributes ``exp(-s_i) * L_i + s_i``: a noisy component lowers its own weight, and the ``+ s_i``
term stops every weight from collapsing to zero. Off by default (``losses.dynamic_loss_weighting``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")


class UncertaintyWeighting(nn.Module):
    def __init__(self, names: tuple[str, ...] = LOSS_NAMES) -> None:
        super().__init__()
        self.names = tuple(names)
        # "loss_balancer" is among the optimiser's no-weight-decay keys: decay would pull weights to 1.
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Re-weighted losses (same keys) and the current weights exp(-s_i) as detached stats."""
        out = dict(losses)
        stats = {}
        for i, name in enumerate(self.names):
            s = self.log_vars[i]
            out[name] = torch.exp(-s) * losses[name] + s
            stats[f"weight_{name[len('loss_'):]}"] = torch.exp(-s).detach()
        return out, stats
