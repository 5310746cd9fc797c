"""Lightning's checkpoint writer, made atomic: a killed job never leaves a half-written ``last.ckpt``."""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint.native import atomic_torch_save

PathLike = Union[str, os.PathLike]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO writing local files atomically (temp file + fsync + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote filesystem: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
