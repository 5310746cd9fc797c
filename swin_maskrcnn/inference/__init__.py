"""Sliced prediction for large images and test-time augmentation (see docs/large_images.md).

``tiling`` (tile grid, :class:`SliceConfig`), ``instances`` (detections with box-sized mask crops),
``merge`` (mask-IoU / IoS merging: nms, nmm, fuse), ``tta`` (:class:`TTAConfig`), ``sliced``
(:func:`predict_instances`, one image through tiles and views).
"""
from .instances import Instances, crop_rle, crops_to_dense, paste_crops
from .merge import merge_instances
from .sliced import predict_instances
from .tiling import SliceConfig, SliceConfigError, Tile, tile_grid, tile_starts
from .tta import TTAConfig, View

__all__ = ["Instances", "crop_rle", "crops_to_dense", "paste_crops", "merge_instances", "predict_instances",
           "SliceConfig", "SliceConfigError", "Tile", "tile_grid", "tile_starts", "TTAConfig", "View"]
