"""Synthetic instance-segmentation data in COCO format, generated deterministically from a seed.

Every image shows a textured background and 0..N shapes of five classes: ``rectangle``,
``ellipse``, ``triangle``, ``ring`` (an ellipse with an elliptical hole: whatever lies behind the
hole stays visible) and ``star`` (5..7 points). ``ShapeParams.classes`` selects other shapes
(and their order, i.e. the category ids) from :data:`SHAPE_NAMES`, which adds ``cross`` (a plus
sign: two perpendicular bars); the default is the five above, and the default output is
unchanged by the option. Shapes get random sizes (log-uniform), aspect
ratios, rotations, colours and textures (solid, stripes, gradient, noise, checker); backgrounds
are gradients, smooth colour clouds, noise or faint stripes. Shapes are painted in order, so later
shapes occlude earlier ones, and a shape may be cut by the image border.

Ground truth is exactly what is visible: an instance's mask is the set of pixels painted with its
texture in the final image (its shape minus everything painted later), its ``bbox`` is the tight
box ``[x, y, w, h]`` of that mask (integer pixel edges), its ``area`` the mask's pixel count, and
``segmentation`` the mask as compressed RLE (``counts`` a str). Instances whose visible area is
below ``min_visible_area`` pixels or below ``min_visible_fraction`` of the shape's full
(unoccluded, in-image) area are dropped; their remaining pixels stay in the image, unlabelled.
Masks of one image therefore never overlap. A fixed share (``empty_fraction``) of every split
are empty images (background only, no annotation). The placement of a new shape is retried when
it would hide too much of an earlier one, so drops are rare but possible.

Layout written by :func:`generate_dataset`::

    out_dir/images/<split>/000000.png ...
    out_dir/annotations/<split>.json        (COCO: images, annotations, categories)

Determinism: image ``i`` of split ``s`` is rendered from ``numpy.random.SeedSequence([seed,
crc32(s), i])`` only, so it does not depend on the other images, the split sizes or the platform;
the same arguments give byte-identical files.

Command line::

    python -m swin_maskrcnn.data.synthetic --out data/shapes --train 400 --val 100 --size 128 --seed 0
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..io_utils import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "SHAPE_NAMES",
    "ShapeParams",
    "Sample",
    "SplitPaths",
    "render_sample",
    "sample_seed_sequence",
    "mask_to_annotation",
    "params_info",
    "generate_split",
    "generate_dataset",
    "main",
]

#: category names; category ids are 1..5 in this order
CLASS_NAMES: tuple[str, ...] = ("rectangle", "ellipse", "triangle", "ring", "star")
#: every shape the generator can draw (``ShapeParams.classes`` picks from these)
SHAPE_NAMES: tuple[str, ...] = CLASS_NAMES + ("cross",)

TEXTURES: tuple[str, ...] = ("solid", "stripes", "gradient", "noise", "checker")
BACKGROUNDS: tuple[str, ...] = ("gradient", "clouds", "noise", "stripes")

ImageSize = Union[int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]


@dataclass(frozen=True)
class ShapeParams:
    """How the images are drawn (all sizes in pixels or fractions of the image's shorter side)."""

    min_objects: int = 1
    max_objects: int = 6
    empty_fraction: float = 0.05
    #: shape diameter range as a fraction of the image's shorter side (sampled log-uniformly)
    size_range: tuple[float, float] = (0.12, 0.45)
    min_visible_area: int = 40
    min_visible_fraction: float = 0.3
    #: shapes are rotated by a uniform angle in [-max_rotation, max_rotation] degrees
    max_rotation: float = 180.0
    #: attempts to place a shape without hiding too much of an earlier one
    placement_tries: int = 10
    #: minimum RGB distance (0..sqrt(3)) between a shape's colour and the background's mean colour
    min_contrast: float = 0.3
    #: std of the Gaussian pixel noise added to the whole image (in [0, 1] units)
    pixel_noise: float = 0.02
    #: shape fills to draw from (any of solid, stripes, gradient, noise, checker), with weights
    textures: tuple[str, ...] = ("solid", "stripes", "gradient", "noise", "checker")
    texture_weights: tuple[float, ...] = (0.3, 0.2, 0.2, 0.2, 0.1)
    #: background kinds to draw from uniformly (any of gradient, clouds, noise, stripes)
    backgrounds: tuple[str, ...] = ("gradient", "clouds", "noise", "stripes")
    #: the shapes drawn (uniformly), in category-id order (id k+1 = classes[k]); any of SHAPE_NAMES
    classes: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self) -> None:
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        lo, hi = self.size_range
        if not 0 < lo <= hi:
            raise ValueError(f"size_range must satisfy 0 < low <= high, got {self.size_range}")
        if self.min_visible_area < 1:
            raise ValueError(f"min_visible_area must be >= 1, got {self.min_visible_area}")
        if not self.textures or set(self.textures) - set(TEXTURES):
            raise ValueError(f"textures must be a non-empty subset of {TEXTURES}, got {self.textures}")
        if len(self.texture_weights) != len(self.textures) or min(self.texture_weights) < 0 or sum(self.texture_weights) <= 0:
            raise ValueError(f"texture_weights must be {len(self.textures)} non-negative numbers, got {self.texture_weights}")
        if not self.backgrounds or set(self.backgrounds) - set(BACKGROUNDS):
            raise ValueError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}, got {self.backgrounds}")
        if not self.classes or set(self.classes) - set(SHAPE_NAMES) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names from {SHAPE_NAMES}, got {self.classes}")


@dataclass
class Sample:
    """One rendered image: ``image`` uint8 (H, W, 3); per annotated instance (paint order) a label
    index into ``ShapeParams.classes`` (default :data:`CLASS_NAMES`) and its visible mask (bool (H, W)).

    For checking: ``painted_labels`` / ``painted_masks`` are every painted shape (dropped ones
    included) with its FULL in-image mask, in paint order, and ``kept[j]`` is the paint index of
    annotated instance ``j``."""

    image: np.ndarray
    labels: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    painted_labels: list[int] = field(default_factory=list)
    painted_masks: list[np.ndarray] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SplitPaths:
    """Where a generated split lies, and what it holds."""

    split: str
    ann_file: str
    image_dir: str
    num_images: int
    num_instances: int
    num_empty: int


# ------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------
def _polygon_mask(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the pixel centres (xs, ys) against a closed polygon."""
    inside = np.zeros(xs.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[i - 1]
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)
        x_int = (x2 - x1) * (ys - y1) / (y2 - y1) + x1
        inside ^= crosses & (xs < x_int)
    return inside


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int, params: ShapeParams) -> np.ndarray:
    """A full (unoccluded) mask of a random shape of class ``params.classes[label]``, clipped to the image."""
    short = min(h, w)
    lo, hi = params.size_range
    diameter = math.exp(rng.uniform(math.log(lo * short), math.log(hi * short)))
    r = diameter / 2.0
    cx = rng.uniform(0.08 * w, 0.92 * w)
    cy = rng.uniform(0.08 * h, 0.92 * h)
    theta = math.radians(rng.uniform(-params.max_rotation, params.max_rotation))
    # pixel centres in a window around the shape (the shape never reaches beyond r from the centre)
    x0, x1 = max(0, int(math.floor(cx - r - 1))), min(w, int(math.ceil(cx + r + 1)))
    y0, y1 = max(0, int(math.floor(cy - r - 1))), min(h, int(math.ceil(cy + r + 1)))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    xs += 0.5
    ys += 0.5
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's rotated frame
    name = params.classes[label]
    if name == "rectangle":
        k = rng.uniform(0.4, 1.0)  # aspect; half-diagonal = r
        a = r / math.sqrt(1.0 + k * k)
        b = k * a
        local = (np.abs(u) <= a) & (np.abs(v) <= b)
    elif name in ("ellipse", "ring"):
        a = r
        b = r * rng.uniform(0.55, 1.0)
        q = (u / a) ** 2 + (v / b) ** 2
        local = q <= 1.0
        if name == "ring":
            k = rng.uniform(0.4, 0.65)
            local &= q > k * k
    elif name == "triangle":
        # apex up (y grows downwards), corners jittered
        angles = np.array([-math.pi / 2, math.pi / 6, 5 * math.pi / 6]) + rng.uniform(-0.3, 0.3, size=3) + theta
        verts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
        local = _polygon_mask(xs, ys, verts)
    elif name == "star":
        points = int(rng.integers(5, 8))
        inner = rng.uniform(0.38, 0.55)
        k = np.arange(2 * points)
        angles = theta - math.pi / 2 + k * math.pi / points
        radii = np.where(k % 2 == 0, r, r * inner)
        verts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        local = _polygon_mask(xs, ys, verts)
    elif name == "cross":
        # two perpendicular bars of half-length r (the tips reach the circle) and half-width t
        t = r * rng.uniform(0.18, 0.3)
        local = ((np.abs(u) <= r) & (np.abs(v) <= t)) | ((np.abs(v) <= r) & (np.abs(u) <= t))
    else:  # pragma: no cover - SHAPE_NAMES and this function change together
        raise ValueError(f"unknown shape class {name!r}")
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = local
    return mask


# ------------------------------------------------------------------------------------------------
# colours and textures
# ------------------------------------------------------------------------------------------------
def _unit_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, h: int, w: int, kinds: Sequence[str] = BACKGROUNDS) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    kind = str(rng.choice(list(kinds)))
    c1 = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    if kind == "gradient":
        c2 = np.clip(c1 + rng.uniform(-0.4, 0.4, size=3), 0, 1).astype(np.float32)
        xs, ys = _unit_grid(h, w)
        a = rng.uniform(0, 2 * math.pi)
        t = (math.cos(a) * xs / w + math.sin(a) * ys / h)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        bg = c1 + (c2 - c1) * t[..., None]
    elif kind == "clouds":
        g = int(rng.integers(3, 7))
        coarse = np.clip(c1 + rng.uniform(-0.3, 0.3, size=(g, g, 3)), 0, 1)
        img = Image.fromarray((coarse * 255).round().astype(np.uint8)).resize((w, h), Image.BICUBIC)
        bg = np.asarray(img, dtype=np.float32) / 255.0
    elif kind == "noise":
        bg = c1 + rng.normal(0.0, rng.uniform(0.04, 0.1), size=(h, w, 3))
    else:
        c2 = np.clip(c1 + rng.uniform(-0.15, 0.15, size=3), 0, 1).astype(np.float32)
        bg = _stripes(rng, h, w, c1, c2)
    return np.clip(bg, 0, 1).astype(np.float32)


def _stripes(rng: np.random.Generator, h: int, w: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    xs, ys = _unit_grid(h, w)
    a = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 12.0)
    phase = ((math.cos(a) * xs + math.sin(a) * ys) / period + rng.uniform(0, 1)) % 1.0
    return np.where((phase < 0.5)[..., None], c1, c2).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray,
             kinds: Sequence[str] = TEXTURES, weights: Sequence[float] = (0.3, 0.2, 0.2, 0.2, 0.1)) -> np.ndarray:
    """Fill of a shape: (H, W, 3) float32 (only the shape's pixels are used)."""
    p = np.asarray(weights, dtype=np.float64)
    kind = str(rng.choice(list(kinds), p=p / p.sum()))
    second = np.clip(colour + rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.15, 0.35, size=3), 0, 1)
    second = second.astype(np.float32)
    if kind == "solid":
        return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if kind == "stripes":
        return _stripes(rng, h, w, colour, second)
    if kind == "gradient":
        xs, ys = _unit_grid(h, w)
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (math.cos(a) * (xs - w / 2) + math.sin(a) * (ys - h / 2)) / max(h, w), 0, 1)
        return (colour + (second - colour) * t[..., None]).astype(np.float32)
    if kind == "noise":
        return (colour + rng.normal(0.0, rng.uniform(0.05, 0.12), size=(h, w, 3))).astype(np.float32)
    xs, ys = _unit_grid(h, w)
    cell = rng.uniform(3.0, 8.0)
    odd = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(bool)
    return np.where(odd[..., None], colour, second).astype(np.float32)


def _shape_colour(rng: np.random.Generator, bg_mean: np.ndarray, min_contrast: float) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(30):
        c = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        d = float(np.linalg.norm(c - bg_mean))
        if d >= min_contrast:
            return c
        if d > best_d:
            best, best_d = c, d
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------
# one image
# ------------------------------------------------------------------------------------------------
def sample_seed_sequence(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence image ``index`` of ``split`` is rendered from."""
    return np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def _image_hw(rng: np.random.Generator, image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    a, b = image_size
    if isinstance(a, (tuple, list)):
        (h0, h1), (w0, w1) = a, b  # type: ignore[misc]
        return int(rng.integers(int(h0), int(h1) + 1)), int(rng.integers(int(w0), int(w1) + 1))
    return int(a), int(b)  # type: ignore[arg-type]


def render_sample(
    seed_seq: np.random.SeedSequence,
    image_size: ImageSize = 128,
    params: ShapeParams = ShapeParams(),
    empty: bool = False,
) -> Sample:
    """Render one image (see the module docstring); ``empty`` gives a background-only image."""
    rng = np.random.default_rng(seed_seq)
    h, w = _image_hw(rng, image_size)
    if h < 8 or w < 8:
        raise ValueError(f"image size must be at least 8x8, got {h}x{w}")
    canvas = _background(rng, h, w, params.backgrounds)
    bg_mean = canvas.reshape(-1, 3).mean(axis=0)
    labels: list[int] = []
    full_areas: list[int] = []
    visible: list[np.ndarray] = []
    painted: list[np.ndarray] = []
    n = 0 if empty else int(rng.integers(params.min_objects, params.max_objects + 1))
    for _ in range(n):
        label = int(rng.integers(len(params.classes)))
        mask = None
        for _try in range(params.placement_tries):
            cand = _shape_mask(rng, label, h, w, params)
            if cand.sum() < params.min_visible_area:
                continue
            ok = all(
                (vis & ~cand).sum() >= params.min_visible_fraction * full
                for vis, full in zip(visible, full_areas)
            )
            if ok:
                mask = cand
                break
        if mask is None:
            continue
        colour = _shape_colour(rng, bg_mean, params.min_contrast)
        canvas = np.where(mask[..., None], _texture(rng, h, w, colour, params.textures, params.texture_weights), canvas)
        for vis in visible:
            vis &= ~mask
        visible.append(mask.copy())
        painted.append(mask)
        labels.append(label)
        full_areas.append(int(mask.sum()))
    if params.pixel_noise > 0:
        canvas = canvas + rng.normal(0.0, params.pixel_noise, size=canvas.shape).astype(np.float32)
    image = (np.clip(canvas, 0, 1) * 255.0).round().astype(np.uint8)
    out = Sample(image=image, painted_labels=labels, painted_masks=painted)
    for p, (label, vis, full) in enumerate(zip(labels, visible, full_areas)):
        area = int(vis.sum())
        if area < params.min_visible_area or area < params.min_visible_fraction * full:
            continue
        out.labels.append(label)
        out.masks.append(vis)
        out.kept.append(p)
    return out


def mask_to_annotation(mask: np.ndarray) -> dict[str, Any]:
    """COCO ``segmentation`` (compressed RLE, counts as str), tight ``bbox`` [x, y, w, h] and
    ``area`` (pixel count) of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return {
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"]},
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        "area": float(xs.size),
    }


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def _empty_indices(seed: int, split: str, n: int, fraction: float) -> set[int]:
    k = int(round(n * fraction))
    if k == 0:
        return set()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8")), 2**31 - 1]))
    return set(int(i) for i in rng.permutation(n)[:k])


def params_info(params: ShapeParams) -> dict[str, Any]:
    """``params`` as written into ``info.params`` of the json: ``classes`` only when not the default,
    so that the default output stays what it was before the option existed."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()
            if k != "classes" or tuple(v) != CLASS_NAMES}


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f))


def generate_split(
    out_dir: Union[str, Path],
    split: str,
    num_images: int,
    image_size: ImageSize = 128,
    seed: int = 0,
    params: ShapeParams = ShapeParams(),
) -> SplitPaths:
    """Render ``num_images`` images of ``split`` into ``out_dir`` (see the module docstring)."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ValueError(f"invalid split name {split!r}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    empty = _empty_indices(seed, split, num_images, params.empty_fraction)
    images, annotations = [], []
    num_empty = 0
    for i in range(num_images):
        sample = render_sample(sample_seed_sequence(seed, split, i), image_size, params, empty=i in empty)
        h, w = sample.image.shape[:2]
        file_name = f"{i:06d}.png"
        Image.fromarray(sample.image).save(image_dir / file_name, format="PNG", compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        num_empty += int(not sample.labels)
        for label, mask in zip(sample.labels, sample.masks):
            ann = mask_to_annotation(mask)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label + 1,
                "iscrowd": 0,
                **ann,
            })
    coco = {
        "info": {
            "description": "swin_maskrcnn synthetic shapes",
            "split": split,
            "seed": int(seed),
            "image_size": image_size if isinstance(image_size, int) else [list(s) if isinstance(s, (tuple, list)) else s for s in image_size],
            "params": params_info(params),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(params.classes)],
    }
    ann_file = out_dir / "annotations" / f"{split}.json"
    _write_json_atomic(ann_file, coco)
    log.info("synthetic %s: %d images (%d empty), %d instances -> %s", split, num_images, num_empty,
             len(annotations), ann_file)
    return SplitPaths(split, str(ann_file), str(image_dir), num_images, len(annotations), num_empty)


def generate_dataset(
    out_dir: Union[str, Path],
    num_images: Union[int, Mapping[str, int]] = None,  # type: ignore[assignment]
    image_size: ImageSize = 128,
    seed: int = 0,
    splits: Sequence[str] = ("train", "val"),
    params: Optional[ShapeParams] = None,
) -> dict[str, SplitPaths]:
    """Generate every split; returns ``{split: SplitPaths}``.

    ``num_images`` is a mapping ``{split: count}`` (then ``splits`` is ignored) or one count used for
    every split in ``splits`` (default ``{"train": 400, "val": 100}``). ``image_size`` is an int
    (square), ``(H, W)``, or ``((h_min, h_max), (w_min, w_max))`` for a random size per image.
    Splits are rendered from different seed streams, so a held-out split shares no image with
    the training split.
    """
    if num_images is None:
        counts: dict[str, int] = {"train": 400, "val": 100}
    elif isinstance(num_images, Mapping):
        counts = {str(k): int(v) for k, v in num_images.items()}
    else:
        counts = {str(s): int(num_images) for s in splits}
    if not counts:
        raise ValueError("no split to generate")
    params = params or ShapeParams()
    return {s: generate_split(out_dir, s, n, image_size, seed, params) for s, n in counts.items()}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _parse_size(text: str) -> ImageSize:
    """``128`` | ``128x160`` (HxW) | ``96-160`` (random square-ish range for both sides)."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-", 1))
        return ((lo, hi), (lo, hi))
    if "x" in text:
        h, w = (int(v) for v in text.lower().split("x", 1))
        return (h, w)
    return int(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m swin_maskrcnn.data.synthetic",
        description="Generate a synthetic COCO instance-segmentation dataset of textured, occluding shapes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (images/<split>/, annotations/<split>.json)")
    p.add_argument("--train", type=int, default=400, help="training images")
    p.add_argument("--val", type=int, default=100, help="held-out validation images")
    p.add_argument("--size", type=_parse_size, default=128, help="image size: 128, 128x160 (HxW) or 96-160 (range)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=ShapeParams.max_objects)
    p.add_argument("--empty-fraction", type=float, default=ShapeParams.empty_fraction)
    p.add_argument("--classes", default=",".join(CLASS_NAMES),
                   help=f"comma-separated shapes to draw, in category-id order (any of {','.join(SHAPE_NAMES)})")
    args = p.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = ShapeParams(max_objects=args.max_objects, empty_fraction=args.empty_fraction,
                         classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()))
    counts = {k: v for k, v in (("train", args.train), ("val", args.val)) if v > 0}
    out = generate_dataset(args.out, counts, image_size=args.size, seed=args.seed, params=params)
    for s in out.values():
        print(f"{s.split}: {s.num_images} images ({s.num_empty} empty), {s.num_instances} instances -> {s.ann_file}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
