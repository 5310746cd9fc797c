"""Small file helpers shared by every part of the package.

``atomic_write``: a crash or an error never leaves a half-written or corrupted file behind. The content goes to a temporary file in the target folder, is fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows); on any error the temporary file is removed and the
previous file, if any, is untouched. An ``OSError`` (disk full, read-only folder, no permission)
comes out as :class:`OutputWriteError` naming the file, the cause and the free space there.

``check_writable``: the same failures found before a long job starts (probe file + free space).
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

import torch

log = logging.getLogger(__name__)


class OutputWriteError(OSError):
    """An output file or folder could not be written (disk full, read-only, no permission). The
    message names the path, the cause and the free space; a file being replaced is left as it was."""


def _free_text(folder: Path) -> str:
    """"N MiB free on <folder>" for messages (nearest existing parent; "" when unknown)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{shutil.disk_usage(probe).free / 2**20:.0f} MiB free on {probe}"
    except OSError:
        return ""


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file, then move it to ``path``; returns ``path``.

    Raises :class:`OutputWriteError` (an ``OSError``) when the folder or file cannot be written;
    ``path``'s previous content is then unchanged and no temporary file is left.
    """
    path = Path(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            free = _free_text(path.parent)
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise OutputWriteError(e.errno, f"cannot write {path}: {e.strerror or e}"
                                   f"{f' ({free})' if free else ''}; {kept}") from e
        raise
    return path


def check_writable(folder: Union[str, os.PathLike], need_bytes: int = 0, what: str = "output folder") -> Path:
    """Create ``folder`` if needed, write, fsync and delete a probe file in it, and check that at
    least ``need_bytes`` are free there. Raises :class:`OutputWriteError` naming ``what`` and the
    folder: found before a job starts rather than at its first checkpoint, hours in."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".write-probe.", dir=str(folder)) as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputWriteError(e.errno, f"{what} {folder} is not writable: {e.strerror or e}") from e
    free = shutil.disk_usage(folder).free
    if need_bytes and free < need_bytes:
        raise OutputWriteError(
            errno.ENOSPC, f"{what} {folder}: {free / 2**20:.0f} MiB free, but one checkpoint needs about "
            f"{need_bytes / 2**20:.0f} MiB (free some space or point the output elsewhere)"
        )
    return folder


def json_ready(o: Any) -> Any:
    """Plain JSON types: tensors become lists, NaN/inf (a per-class AP without ground truth) null."""
    if isinstance(o, dict):
        return {str(k): json_ready(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_ready(v) for v in o]
    if isinstance(o, torch.Tensor):
        return json_ready(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


@contextlib.contextmanager
def stdout_to_log(logger: logging.Logger = log, level: int = logging.DEBUG) -> Iterator[None]:
    """Captures what a chatty library (pycocotools) prints and sends it to ``logger`` instead of stdout."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            for line in text.splitlines():
                logger.log(level, "%s", line)
