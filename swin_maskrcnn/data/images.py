"""Reading image files as the model sees them: 8-bit RGB, EXIF orientation applied.

Shared by the COCO dataset (training and evaluation) and ``predict``, so an image is converted the
same way everywhere. Imports only PIL and numpy (no pycocotools): predicting stays light.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["load_rgb_image", "pil_to_rgb_uint8", "IMAGE_EXTENSIONS", "ImageTooLargeError", "default_max_pixels"]

#: file extensions ``predict`` collects from folders (lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def pil_to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Converts any PIL image to an 8-bit RGB array (H, W, 3).

    * 16-bit grayscale (``I;16*``) is scaled by 255 / 65535 (full range, rounded), not clipped.
    * 32-bit integer (``I``): values within [0, 65535] (how Pillow often opens 16-bit PNGs) are
      scaled by 255 / 65535; other ranges are min-max scaled.
    * float (``F``): values within [0, 1] are scaled by 255, other ranges min-max scaled.
    * everything else (L, P, RGBA, LA, CMYK, 1, ...) goes through ``convert("RGB")``; an alpha
      channel is dropped (as cv2's IMREAD_COLOR does), palette images with transparency go
      through RGBA first.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if arr.ndim == 3:
            arr = arr[..., 0]
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
            scaled = arr * (255.0 / 65535.0)
        elif mode == "F" and lo >= 0 and hi <= 1:
            scaled = arr * 255.0
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


class ImageTooLargeError(ValueError):
    """An image with more pixels than the decompression-bomb limit (``width``, ``height``, ``limit``)."""

    def __init__(self, path: Path, width: int, height: int, limit: int, explicit: bool) -> None:
        whose = "the --max-image-pixels / max_image_pixels limit" if explicit else "PIL's decompression-bomb limit"
        super().__init__(f"{path}: {width}x{height} = {width * height:,} pixels is above {whose} of {limit:,} pixels")
        self.path, self.width, self.height, self.limit, self.explicit = path, width, height, limit, explicit


def default_max_pixels() -> Optional[int]:
    """PIL's own limit: ``Image.open`` refuses images above 2 x ``Image.MAX_IMAGE_PIXELS`` (178,956,970
    by default; it only warns between 1x and 2x)."""
    m = Image.MAX_IMAGE_PIXELS
    return None if m is None else 2 * int(m)


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_limit_off() -> Iterator[None]:
    """PIL's global decompression-bomb check off (we check the header's size ourselves)."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header_size(path: Path) -> tuple[int, int]:
    with _pil_limit_off(), Image.open(path) as img:
        return img.size


def load_rgb_image(path: Union[str, Path], max_pixels: Optional[int] = None) -> np.ndarray:
    """Reads an image with PIL, applies its EXIF orientation and returns uint8 RGB (H, W, 3).

    ``max_pixels``: the decompression-bomb limit (width x height) for this image; None keeps PIL's
    (:func:`default_max_pixels`). An image above it raises :class:`ImageTooLargeError` (a
    ValueError) before it is decoded. Raises FileNotFoundError / ValueError (unreadable) naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if max_pixels is not None:
            w, h = _header_size(path)
            if w * h > int(max_pixels):
                raise ImageTooLargeError(path, w, h, int(max_pixels), explicit=True)
            context = _pil_limit_off()
        else:
            context = contextlib.nullcontext()
        with context, Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return pil_to_rgb_uint8(img)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        w, h = _header_size(path)
        raise ImageTooLargeError(path, w, h, default_max_pixels() or w * h, explicit=False) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {exc}") from exc
