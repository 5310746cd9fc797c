"""Command-line options shared by the commands: the ``--help`` formatter, and for ``evaluate`` and
``predict`` the ``roi`` overrides, their checks and the device default, written once.

    add_inference_arguments(parser)        # --score-thr, --max-per-img, --batch-size, --device
    roi = roi_overrides(args)              # {"score_thr": ..., "max_per_img": ...} of the given ones
    device = default_device(args.device)   # cuda when available, else cpu
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Union

import torch

from ..errors import ConfigError

__all__ = ["HelpFormatter", "add_inference_arguments", "roi_overrides", "default_device"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in ``--help``, said once: not added where the text already says
    "(default: ...)", nor for a None default (the text says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None:
            return text
        return super()._get_help_string(action) or text


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """``--score-thr``, ``--max-per-img`` (the checkpoint's ``roi`` settings), ``--batch-size`` and ``--device``."""
    p.add_argument("--score-thr", type=float, default=None,
                   help="score threshold in [0, 1] for every class (default: the checkpoint's roi.score_thr and "
                        "roi.score_thr_per_class)")
    p.add_argument("--max-per-img", type=int, default=None,
                   help="detections per image (default: the checkpoint's roi.max_per_img)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def roi_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``roi`` overrides given on the command line (checked), for ``load_checkpoint(..., roi=...)``.

    Raises ConfigError naming the option for a batch size or a detection count below 1 and a score
    threshold outside [0, 1]."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_per_img is not None and args.max_per_img < 1:
        raise ConfigError(f"--max-per-img must be >= 1, got {args.max_per_img}")
    if args.score_thr is not None and not 0.0 <= args.score_thr <= 1.0:
        raise ConfigError(f"--score-thr must be in [0, 1], got {args.score_thr}")
    roi: dict[str, Any] = {k: v for k, v in (("score_thr", args.score_thr), ("max_per_img", args.max_per_img))
                           if v is not None}
    if args.score_thr is not None:  # one threshold for every class, also over the checkpoint's per-class ones
        roi["score_thr_per_class"] = {}
    return roi


def default_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as a torch device; None: cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
