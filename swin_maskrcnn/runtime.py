"""Process-wide settings that make a training or inference process faster without changing results.

:func:`keep_freed_memory` stops glibc's ``malloc`` from handing large freed blocks back to the
kernel. By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``; a Swin-T Mask R-CNN step allocates many such tensors
(a 256-channel stride-4 map of an 800 x 1216 image is 62 MiB), so every step touches gigabytes of
new pages and the kernel zeroes each of them on its first write (page faults). Measured on a
Xeon with 1 torch thread (``docs/performance.md``): a training step at batch 2 spent 10-13 of its
33-37 CPU-seconds in the kernel this way. With mmap disabled and trimming off, freed memory stays
in the heap and is reused, which is what jemalloc / tcmalloc (the allocators the PyTorch CPU
tuning guide recommends preloading) achieve; the process's resident memory then stays at its
peak instead of shrinking between steps.

One rule decides whether it applies (``swin_maskrcnn.apps.cli.apply_malloc_setting``):

* training (:func:`swin_maskrcnn.training.train`, ``swin-maskrcnn train`` and ``demo``): the
  config's ``runtime.keep_freed_memory`` (default true); the CLI's ``--system-malloc`` is the
  override ``runtime.keep_freed_memory=false``;
* every other ``swin-maskrcnn`` command: applied at start-up unless ``--system-malloc`` is given;
* ``SWIN_MASKRCNN_SYSTEM_MALLOC=1`` turns it off everywhere (this function then does nothing).

A library user calling :class:`Predictor` in their own process decides for themselves (call this
function, or not).
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: largest value mallopt accepts (its argument is a C int): trim only when 2 GiB are free at the top
_NO_TRIM = 2**31 - 1
ENV_OPT_OUT = "SWIN_MASKRCNN_SYSTEM_MALLOC"

_applied = False


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False, changing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("not glibc (%s %s): malloc settings left alone", platform.system(), platform.libc_ver()[0])
        return False
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn(param, value) == 1


def keep_freed_memory() -> bool:
    """Keep freed memory in this process's heap for reuse (glibc only); returns whether it applies.

    Idempotent. Returns False, changing nothing, on a non-glibc C library (macOS, musl, Windows) or
    when ``SWIN_MASKRCNN_SYSTEM_MALLOC=1`` is set. Child processes started by ``fork`` (DataLoader
    workers) inherit the setting.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_OPT_OUT, "").strip() not in ("", "0"):
        log.info("%s is set: glibc malloc keeps its defaults", ENV_OPT_OUT)
        return False
    if mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, _NO_TRIM):
        _applied = True
        log.debug("glibc malloc: mmap off, trim threshold 2 GiB (freed tensors are reused, not unmapped)")
    return _applied
