"""Data side: COCO dataset, aligned transforms, batching.

The data pipeline produces float images in [0, 1] (divided by 255 once, never mean/std-normalised)
and targets with ``boxes`` xyxy float32, contiguous ``labels`` int64 (0..C-1) and ``masks`` uint8.
"""
from .coco import CocoInstanceDataset, load_rgb_image, pil_to_rgb_uint8
from .loader import AspectRatioGroupedBatchSampler, build_dataloader, collate, dataset_aspect_ratios
from .transforms import (
    Compose,
    Identity,
    RandomAbsoluteCrop,
    RandomChoice,
    RandomChoiceResize,
    RandomHorizontalFlip,
    Resize,
    build_test_transforms,
    build_train_transforms,
    masks_to_boxes,
    rescale_size,
)

__all__ = [
    "CocoInstanceDataset",
    "load_rgb_image",
    "pil_to_rgb_uint8",
    "AspectRatioGroupedBatchSampler",
    "build_dataloader",
    "collate",
    "dataset_aspect_ratios",
    "Compose",
    "Identity",
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
