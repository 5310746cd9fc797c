"""Tiles over a large image: where they start and how big they are (``--slice H W --overlap R``).

Tiles are ``H x W`` at the image's own resolution. Along each axis tiles start every
``stride = size - int(overlap * size)`` pixels from 0; the last one is shifted inwards so that it
ends on the image border and every tile is full size (a grid that would leave a partial tile at the
border instead overlaps its neighbour more). An image smaller than a tile along an axis gets a
single tile of the image's own size along that axis: the image is then predicted whole (at its own
resolution), so a folder mixing small and large images needs no special handling.

Bad settings (a zero or negative tile size, an overlap outside [0, 1), a tile batch below 1, an
unknown merge mode or metric, a merge threshold outside (0, 1]) raise :class:`SliceConfigError`
naming the option.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["SliceConfig", "SliceConfigError", "Tile", "tile_starts", "tile_grid"]

MERGE_MODES = ("nms", "nmm")
MERGE_METRICS = ("iou", "ios")


class SliceConfigError(ConfigError):
    """An invalid slicing or merging setting (the message names the option; the CLI prints it in one line)."""


@dataclass(frozen=True)
class SliceConfig:
    """Sliced prediction settings; the field names follow the command-line options.

    ``height`` / ``width``: the tile size (``--slice H W``); ``overlap``: the fraction of a tile shared
    with its neighbour (``--overlap``, default 0.2); ``batch``: tiles per forward pass
    (``--slice-batch``); ``with_full_image``: the resized whole-image prediction joins the merge
    (``--with-full-image``); ``merge``: ``nms`` (default) keeps the best member of a matched group,
    ``nmm`` (SAHI's default) unites its masks and boxes (measured worse on nuclei mosaics: with IoS a
    confident small detection absorbs large low-score ones; docs/large_images.md); ``merge_iou``: the match threshold (``--merge-iou``);
    ``merge_metric``: mask ``iou`` or ``ios`` (intersection over the smaller mask, which matches an
    object's part cut by a tile border with the whole object); ``class_agnostic``: match across
    classes too (``--class-agnostic-merge``; default: only within a class)."""

    height: int
    width: int
    overlap: float = 0.2
    batch: int = 1
    with_full_image: bool = False
    merge: str = "nms"
    merge_iou: float = 0.5
    merge_metric: str = "ios"
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise SliceConfigError(f"--slice tile size must be positive, got {self.height} x {self.width}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise SliceConfigError(f"--overlap must be in [0, 1), got {self.overlap}")
        if int(self.batch) < 1:
            raise SliceConfigError(f"--slice-batch must be >= 1, got {self.batch}")
        if self.merge not in MERGE_MODES:
            raise SliceConfigError(f"--merge must be one of {', '.join(MERGE_MODES)}, got {self.merge!r}")
        if self.merge_metric not in MERGE_METRICS:
            raise SliceConfigError(f"--merge-metric must be one of {', '.join(MERGE_METRICS)}, got {self.merge_metric!r}")
        if not 0.0 < float(self.merge_iou) <= 1.0:
            raise SliceConfigError(f"--merge-iou must be in (0, 1], got {self.merge_iou}")


class Tile(NamedTuple):
    """One tile: pixel columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` of the image."""

    x0: int
    y0: int
    x1: int
    y1: int


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (see the module docstring).

    ``tile >= size`` gives ``[0]`` (one tile, clipped to the image). The stride is ``tile -
    int(overlap * tile)`` (at least 1); the last start is ``size - tile``."""
    if size < 1:
        raise SliceConfigError(f"cannot slice an image side of {size} px")
    if tile < 1:
        raise SliceConfigError(f"--slice tile size must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise SliceConfigError(f"--overlap must be in [0, 1), got {overlap}")
    if tile >= size:
        return [0]
    stride = max(1, tile - int(overlap * tile))
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def tile_grid(image_h: int, image_w: int, tile_h: int, tile_w: int, overlap: float) -> list[Tile]:
    """All tiles of an ``image_h x image_w`` image, row by row; each is ``min(tile, image)`` in size."""
    ys = tile_starts(image_h, tile_h, overlap)
    xs = tile_starts(image_w, tile_w, overlap)
    th, tw = min(tile_h, image_h), min(tile_w, image_w)
    return [Tile(x, y, x + tw, y + th) for y in ys for x in xs]
