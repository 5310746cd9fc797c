"""Command line: ``swin-maskrcnn {train,evaluate,...}``.

    swin-maskrcnn train --config configs/swin_t_coco_1x.yaml data.train_ann=... [key=value ...]
                        [--losses configs/losses/seed.yaml] [--resume runs/x/checkpoints/last.ckpt]
    swin-maskrcnn evaluate --checkpoint runs/x/checkpoints/best.ckpt --ann val.json --images val/
                           [--max-dets 1 10 100] [--out metrics.json]

    swin-maskrcnn predict --checkpoint CKPT --out preds.json [--viz DIR] IMAGE_OR_DIR...
    swin-maskrcnn export --format safetensors --checkpoint CKPT --out model.safetensors
    swin-maskrcnn demo [--out demo_out]
    swin-maskrcnn inspect --config CFG [key=value ...] --out DIR [--split train|val|both] [--gallery N]

Each subcommand is a module of ``swin_maskrcnn.apps`` (``train``, ``evaluate``, ``predict``, ``inspect``, ``export``,
``demo``) whose ``register_subcommand(subparsers)`` adds its parser with ``set_defaults(func=handler)``,
where ``handler(args) -> int`` returns the exit code.

Library code logs through ``logging``; this module configures it (``--log-level``), applies the
allocator setting (:func:`apply_malloc_setting`) and prints an input error as one line (exit 2).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..errors import InputError
from ..io_utils import OutputWriteError
from ..runtime import keep_freed_memory
from ..training.nonfinite import NonFiniteTrainingError
from . import analyze, demo, evaluate, export, inspect, predict, train

log = logging.getLogger("swin_maskrcnn.apps.cli")


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swin-maskrcnn",
        description="Swin Transformer Mask R-CNN (mmdetection 3.3 semantics): train, evaluate, predict, export.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level of the library and Lightning (DEBUG also logs the traceback of an error)")
    parser.add_argument("--debug", action="store_true",
                        help="let errors in the input (config, data, checkpoint) raise with their Python traceback")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc's defaults (by default freed memory is kept for reuse, which avoids "
                        "page faults on every large tensor; for train and demo the same as the override "
                        "runtime.keep_freed_memory=false; see swin_maskrcnn.runtime)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (train, evaluate, predict, inspect, export, demo, analyze):
        command.register_subcommand(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the commands that print how to continue
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    apply_malloc_setting(args)
    try:
        return int(args.func(args) or 0)
    except (OutputWriteError, NonFiniteTrainingError) as e:  # disk full / diverged: the message says it all
        if args.debug:
            raise
        log.debug("traceback of the error below", exc_info=True)
        print(f"swin-maskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - only the input errors below are caught, the rest re-raised
        if args.debug or not is_input_error(e):
            raise
        # a mistake in the config, the data or a checkpoint: one message naming it, no traceback
        log.debug("traceback of the error below", exc_info=True)
        print(f"swin-maskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 2


def apply_malloc_setting(args: argparse.Namespace) -> None:
    """The one rule for freed-memory reuse (:func:`swin_maskrcnn.runtime.keep_freed_memory`).

    A command that trains (``train``, ``demo``: its parser sets ``trains=True``) leaves the decision to
    its config's ``runtime.keep_freed_memory``, which :func:`~swin_maskrcnn.training.train.train`
    applies; ``--system-malloc`` becomes the override ``runtime.keep_freed_memory=false`` (so the saved
    config.yaml says what ran). Every other command keeps freed memory unless ``--system-malloc`` is
    given. ``SWIN_MASKRCNN_SYSTEM_MALLOC=1`` turns it off everywhere (checked by ``keep_freed_memory``).
    """
    if getattr(args, "trains", False):
        if args.system_malloc:
            args.overrides = [*args.overrides, "runtime.keep_freed_memory=false"]
        return
    if not args.system_malloc:
        keep_freed_memory()


def is_input_error(exc: BaseException) -> bool:
    """True for the library's own errors about its input (:class:`~swin_maskrcnn.errors.InputError`:
    config, data, checkpoint), a missing file and Lightning's MisconfigurationException: the message
    says what to fix; a traceback would only bury it. Anything else is a bug and keeps its traceback."""
    if isinstance(exc, (InputError, FileNotFoundError)):
        return True
    return any(c.__name__ == "MisconfigurationException" for c in type(exc).__mro__)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
