"""Every checkpoint read goes through here: no file can run code, and a bad file gets a clear error.

:func:`read_file` detects the container by its first bytes, not by the file name:

* ``zip``: ``torch.save``'s format (``PK\\x03\\x04``): our ``.pt``, Lightning's ``.ckpt``, mmdet's ``.pth``;
* ``pickle``: torch's legacy (pre-1.6) format, a pickle stream (``\\x80`` protocol marker);
* ``safetensors``: an 8-byte little-endian header length, then a JSON header.

``zip`` and ``pickle`` are read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers; a pickle that names any other Python callable (the way a crafted ``__reduce__``
runs code on load) is refused with :class:`UnsafeCheckpointError` naming the callable, and the callable
is never executed. ``safetensors`` files are read with the ``safetensors`` package (no pickle at all).

A file cut short (an interrupted copy or download) is reported as :class:`TruncatedCheckpointError`
with its size, where the container lets us tell: a zip without its end-of-central-directory record,
a safetensors file shorter than its header says, a pickle stream that ends early.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "TruncatedCheckpointError",
    "detect_container",
    "read_file",
    "read_safetensors",
]

Container = Literal["zip", "pickle", "safetensors"]
PathLike = Union[str, os.PathLike]

_ZIP_MAGIC = b"PK\x03\x04"
#: a safetensors header longer than this is not a header (the format caps it at 100 MB)
_MAX_SAFETENSORS_HEADER = 100_000_000


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects that would run code when loaded; it was not loaded."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends before its container does: an interrupted write, copy or download."""


def _safetensors_sizes(head: bytes, size: int) -> tuple[int, int] | None:
    """(header length, expected file size) if ``head`` starts a safetensors file, else None."""
    if len(head) < 9:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= _MAX_SAFETENSORS_HEADER or head[8:9] != b"{":
        return None
    return n, 8 + n


def detect_container(path: PathLike) -> Container:
    """The container of ``path`` by content. Raises CheckpointError (empty, unknown) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise TruncatedCheckpointError(f"{path}: the file is empty (0 bytes): truncated or not written")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    # safetensors before pickle: a header length whose low byte is 0x80 starts with the pickle opcode
    # (a torch pickle's first 8 bytes never read as a plausible header length followed by "{")
    if _safetensors_sizes(head, size) is not None:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle PROTO 2-5
        return "pickle"
    raise CheckpointError(
        f"{path}: not a checkpoint this package reads (first bytes {head[:8]!r}): expected a torch.save "
        "zip (.pt/.ckpt/.pth), a legacy torch pickle, or a .safetensors file"
    )


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(path: Path, exc: BaseException) -> UnsafeCheckpointError:
    msg = str(exc)
    m = _GLOBAL_RE.search(msg)
    what = f"the Python callable {m.group(1)}" if m else "Python objects other than tensors and plain containers"
    return UnsafeCheckpointError(
        f"{path}: refused: the file's pickle names {what}, which would be executed when the file is loaded; "
        "checkpoints are read with torch.load(weights_only=True), which only rebuilds tensors and plain "
        "containers. If you trust the file, load it yourself and re-save only its state_dict (or export it "
        "with 'swin-maskrcnn export --format safetensors')."
    )


def _torch_load(path: Path, container: Container) -> Any:
    size = path.stat().st_size
    if container == "zip" and not zipfile.is_zipfile(path):
        raise TruncatedCheckpointError(
            f"{path}: truncated: a torch.save zip whose end record is missing ({size} bytes on disk); "
            "the write, copy or download was interrupted"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "GLOBAL" in text or "global" in text:
            raise _refusal(path, e) from None
        if container == "pickle" and ("truncated" in text or "EOF" in text or "ran out" in text.lower()):
            raise TruncatedCheckpointError(f"{path}: truncated: the pickle stream ends early ({size} bytes)") from e
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e
    except EOFError as e:
        raise TruncatedCheckpointError(f"{path}: truncated: the data ends early ({size} bytes)") from e
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        text = str(e)
        if container == "pickle" and ("EOF" in text or "Ran out of input" in text or "truncated" in text):
            raise TruncatedCheckpointError(f"{path}: truncated: the data ends early ({size} bytes)") from e
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e


def read_safetensors(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; truncation and bad headers name the file.

    Only the header is read into memory before the tensors are loaded (memory-mapped by safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        sizes = _safetensors_sizes(head, size)
        if sizes is None:
            raise CheckpointError(f"{path}: not a safetensors file")
        header_end = sizes[1]
        if size < header_end:
            raise TruncatedCheckpointError(f"{path}: truncated: {size} bytes, the safetensors header alone is {header_end}")
        f.seek(8)
        raw_header = f.read(header_end - 8)
    try:
        header = json.loads(raw_header)
    except ValueError as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON: {e}") from e
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = header_end + max(ends, default=0)
    if size < expected:
        raise TruncatedCheckpointError(f"{path}: truncated: {size} bytes, its safetensors header describes {expected}")
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{path}: invalid safetensors file: {e}") from e
    meta = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in meta.items()}


def read_file(path: PathLike) -> tuple[Container, Any]:
    """(container, content) of a checkpoint file, read safely.

    Content is ``torch.load(weights_only=True)``'s object for ``zip``/``pickle`` and
    ``(tensors, metadata)`` for ``safetensors``."""
    path = Path(path)
    container = detect_container(path)
    if container == "safetensors":
        return container, read_safetensors(path)
    return container, _torch_load(path, container)
