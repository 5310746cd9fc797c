"""The command-line options of sliced prediction and TTA, shared by ``predict`` and ``evaluate``.

    --slice H W [--overlap R] [--slice-batch B] [--with-full-image] [--merge nms|nmm]
        [--merge-iou T] [--merge-metric iou|ios] [--class-agnostic-merge]
    --tta [--tta-scales F [F ...]]

:func:`add_arguments` adds them to a parser, :func:`from_args` reads them back as
(:class:`SliceConfig` or None, :class:`TTAConfig` or None); a bad value is the CLI's one-line
:class:`~swin_maskrcnn.errors.ConfigError` naming the option.
"""
from __future__ import annotations

import argparse
from typing import Optional

from .tiling import SliceConfig, SliceConfigError
from .tta import TTAConfig

__all__ = ["add_arguments", "from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sliced prediction (large images, small objects; docs/large_images.md)")
    g.add_argument("--slice", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="predict tiles of H x W px at the image's own resolution and merge them")
    g.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile shared with its neighbour, in [0, 1)")
    g.add_argument("--slice-batch", type=int, default=1, metavar="B", help="tiles per forward pass")
    g.add_argument("--with-full-image", action="store_true",
                   help="the resized whole-image prediction joins the merge (objects larger than a tile)")
    g.add_argument("--merge", choices=["nms", "nmm"], default="nms",
                   help="nmm: unite the masks and boxes of one object's detections; nms: keep the best one")
    g.add_argument("--merge-iou", type=float, default=0.5, metavar="T", help="match threshold of the merge")
    g.add_argument("--merge-metric", choices=["iou", "ios"], default="ios",
                   help="mask IoU, or IoS (intersection over the smaller mask: matches a cut part with the whole)")
    g.add_argument("--class-agnostic-merge", action="store_true", help="merge detections of different classes too")
    t = p.add_argument_group("test-time augmentation (docs/large_images.md)")
    t.add_argument("--tta", action="store_true", help="add the left-right mirrored view and fuse the views")
    t.add_argument("--tta-scales", type=float, nargs="+", default=None, metavar="F",
                   help="resize factors of the views (1.0 = as without TTA; list it to keep that view)")


def from_args(args: argparse.Namespace) -> tuple[Optional[SliceConfig], Optional[TTAConfig]]:
    slicing = None
    if args.slice is not None:
        slicing = SliceConfig(height=args.slice[0], width=args.slice[1], overlap=args.overlap,
                              batch=args.slice_batch, with_full_image=args.with_full_image, merge=args.merge,
                              merge_iou=args.merge_iou, merge_metric=args.merge_metric,
                              class_agnostic=args.class_agnostic_merge)
    tta = None
    if args.tta or args.tta_scales is not None:
        tta = TTAConfig(hflip=bool(args.tta), scales=tuple(args.tta_scales) if args.tta_scales else (1.0,))
    if tta is not None and not tta.hflip and tta.scales == (1.0,):
        raise SliceConfigError("--tta-scales 1.0 alone is no augmentation: add factors or --tta")
    return slicing, tta
