"""``swin-maskrcnn train``: train from a YAML config.

    swin-maskrcnn train --config configs/swin_t_coco_1x.yaml data.train_ann=... [key=value ...]
                        [--losses configs/losses/seed.yaml ...] [--resume runs/x/checkpoints/last.ckpt]

The config is read by :func:`swin_maskrcnn.training.config.load_config` (``--losses`` files merged
over it, then the ``key=value`` overrides) and run by :func:`swin_maskrcnn.training.train.train`;
the training summary is printed as JSON (once, also under DDP).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .options import HelpFormatter

__all__ = ["register_subcommand"]


def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train Swin Mask R-CNN. The config is a YAML file (see configs/); 'key.sub=value' arguments "
            "override single values (value parsed as YAML, e.g. optim.lr=2e-4 data.scale=[1024,640]). "
            "Unknown keys and out-of-range values are errors naming the key. The resolved config is saved "
            "as config.yaml in the run folder (runtime.out_dir/runtime.run_name)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/swin_t_coco_1x.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, applied last")
    p.add_argument("--losses", metavar="YAML", action="append", default=[],
                   help="partial config merged over --config before the overrides, e.g. a loss preset from "
                        "configs/losses/ (repeatable, merged in order)")
    p.add_argument("--resume", metavar="CKPT_OR_RUN", default=None,
                   help="Lightning checkpoint to resume (model, optimiser, schedule, step and data order), or a run "
                        "folder: its newest complete checkpoint (a file cut short by a killed job is skipped)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # trains=True: runtime.keep_freed_memory decides the allocator (swin_maskrcnn.apps.cli.apply_malloc_setting)
    p.set_defaults(func=_cmd_train, trains=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides, layers=list(args.losses))
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from lightning.pytorch.utilities import rank_zero_only

    from ..training.train import train

    summary = train(cfg, resume=args.resume, name_hint=Path(args.config).stem)
    if rank_zero_only.rank == 0:  # one summary, also under DDP (every rank runs this command)
        print(json.dumps(summary, indent=1, default=str))
        if summary.get("resume_command"):
            print(f"stopped by {summary['stopped_by']} at step {summary['global_step']} of {summary['max_steps']}; "
                  f"last.ckpt written; resume with:\n  {summary['resume_command']}", file=sys.stderr, flush=True)
    return int(summary.get("exit_code", 0))  # 128 + the signal after a stop signal: not a success
