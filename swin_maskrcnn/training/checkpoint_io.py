"""Lightning checkpoints that survive a killed job: atomic writes, and a resume that only ever
picks a complete checkpoint.

* :class:`AtomicCheckpointIO` writes every ``.ckpt`` to a temporary file beside it, fsyncs and
  renames it over the target, so a SIGKILL or a full disk mid-write leaves at most a hidden
  ``.<name>.*.tmp`` file and never a half-written ``last.ckpt`` in place of a good one.
* :func:`resolve_resume` turns ``--resume`` (a ``.ckpt`` file, a run folder or its
  ``checkpoints/`` folder) into the checkpoint to resume: a folder gives its newest COMPLETE
  checkpoint (highest ``global_step``, then newest file); a file that cannot be read is refused
  with the name of the newest complete one beside it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint.native import atomic_torch_save
from .config import ConfigError

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "checkpoint_step", "resolve_resume"]

PathLike = Union[str, os.PathLike]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO writing local files atomically (temp file + fsync + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote filesystem: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def checkpoint_step(path: PathLike) -> Optional[int]:
    """``global_step`` of a complete Lightning checkpoint, None when the file is truncated,
    unreadable or not a Lightning checkpoint. Cheap: tensors are memory-mapped, not read."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        log.debug("%s is not a complete checkpoint: %s", path, e)
        return None
    if not isinstance(obj, dict) or "global_step" not in obj or "state_dict" not in obj:
        return None
    return int(obj["global_step"])


def _newest_complete(folder: Path) -> tuple[Optional[Path], list[Path]]:
    """(newest complete checkpoint in ``folder`` or None, the incomplete ones seen)."""
    best: Optional[tuple[int, float, Path]] = None
    broken: list[Path] = []
    seen: set[Path] = set()
    for p in sorted(folder.glob("*.ckpt")):  # hidden .tmp files of interrupted writes never match
        real = p.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        step = checkpoint_step(real)
        if step is None:
            broken.append(p)
            continue
        key = (step, real.stat().st_mtime, real)
        if best is None or key[:2] > best[:2]:
            best = key
    return (None if best is None else best[2]), broken


def resolve_resume(resume: PathLike) -> Path:
    """The checkpoint to resume from (see the module docstring); ConfigError when there is none."""
    path = Path(resume)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found, broken = _newest_complete(folder)
        for p in broken:
            log.warning("--resume: skipping %s: truncated or unreadable (a write cut short?)", p)
        if found is None:
            raise ConfigError(f"--resume {resume}: no complete checkpoint (*.ckpt) in {folder}")
        log.info("--resume %s: newest complete checkpoint is %s (step %s)", resume, found, checkpoint_step(found))
        return found
    if not path.exists():
        raise ConfigError(f"--resume {resume}: no such file or folder")
    if checkpoint_step(path) is None:
        alternative, _ = _newest_complete(path.resolve().parent)
        hint = f"; the newest complete checkpoint there is {alternative}" if alternative is not None else ""
        raise ConfigError(f"--resume {resume}: truncated or not a Lightning checkpoint of this project{hint}")
    return path
