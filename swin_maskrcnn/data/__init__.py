"""Data side: COCO dataset, aligned transforms, batching.

The data pipeline produces float images in [0, 1] (divided by 255 once, never mean/std-normalised)
and targets with ``boxes`` xyxy float32, contiguous ``labels`` int64 (0..C-1) and ``masks`` uint8.
"""
from importlib import import_module
from typing import Any

#: public name -> submodule. Imported on first use (PEP 562), so ``swin_maskrcnn.data.images`` (used by
#: ``predict``) does not pull in pycocotools through the COCO dataset.
_EXPORTS = {
    "CocoInstanceDataset": "coco",
    "load_rgb_image": "images",
    "pil_to_rgb_uint8": "images",
    "AspectRatioGroupedBatchSampler": "loader",
    "build_dataloader": "loader",
    "collate": "loader",
    "dataset_aspect_ratios": "loader",
    "DataError": "validation",
    "ImageNotFoundError": "validation",
    "ValidationReport": "validation",
    **{name: "transforms" for name in (
        "Compose", "RandomAbsoluteCrop", "RandomChoice", "RandomChoiceResize", "RandomHorizontalFlip",
        "Resize", "build_test_transforms", "build_train_transforms", "masks_to_boxes", "rescale_size",
    )},
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CocoInstanceDataset",
    "load_rgb_image",
    "pil_to_rgb_uint8",
    "DataError",
    "ImageNotFoundError",
    "ValidationReport",
    "AspectRatioGroupedBatchSampler",
    "build_dataloader",
    "collate",
    "dataset_aspect_ratios",
    "Compose",
    "RandomAbsoluteCrop",
    "RandomChoice",
    "RandomChoiceResize",
    "RandomHorizontalFlip",
    "Resize",
    "build_test_transforms",
    "build_train_transforms",
    "masks_to_boxes",
    "rescale_size",
]
