"""Small file helpers shared by every part of the package.

``atomic_write``: a crash or an error never leaves a half-written or corrupted file behind. The content goes to a temporary file in the target folder, is fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows); on any error the temporary file is removed and the
previous file, if any, is untouched.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Union

import torch

log = logging.getLogger(__name__)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file, then move it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
