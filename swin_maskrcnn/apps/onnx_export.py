"""Export a :class:`SwinMaskRCNN` to one ONNX graph, from a uint8 image to detections.

The graph runs with onnxruntime alone (no PyTorch): input ``image`` uint8 ``[3, H, W]`` RGB with
dynamic H and W; outputs ``boxes`` float32 ``[N, 4]`` (xyxy, input pixels), ``scores`` float32 ``[N]``,
``labels`` int64 ``[N]`` (0-based) and ``masks`` float32 ``[N, 28, 28]`` (RoI-resolution mask
probabilities of each detection's class; :func:`swin_maskrcnn.apps.onnx_runtime.paste_masks` pastes
them into the image as ``predict`` does). It computes what ``model.predict([image], resize=False)``
computes: normalise, zero-pad to 32, backbone, FPN, RPN with per-level NMS, RoI heads with per-class
NMS, mask head.

How: :class:`OnnxDetector` wraps the model's own modules (backbone, neck, RPN convs, anchor
generator, box coders, box and mask heads) and re-states the two post-processing steps whose eager
code has data-dependent Python branches (``if boxes.numel()``, levels without RoIs) as branch-free
tensor code: per-level top-k with ``min(k, n)``, NMS as ONNX ``NonMaxSuppression`` with one
class per level (RPN) or per object class (RoI head), and multi-level RoIAlign merged by a gather.
It is exported with PyTorch's TorchScript-based exporter (``dynamo=False``), which traces shape
arithmetic (window padding, shift masks, anchor grids) as graph ops, and uses torchvision's
registered ONNX symbolics for ``roi_align`` (opset >= 16: ``coordinate_transformation_mode=
half_pixel``, i.e. ``aligned=True``).

Python branches that depend on sizes are frozen at trace time, so the example image is chosen so that
every branch that some input size can take is taken with a no-op-safe value: its padded size in
32-pixel cells is coprime with the window size, so every stage whose map can need window padding
needs it in the trace (zero padding is exact for the sizes that do not).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from ..modeling.detector import SwinMaskRCNN
from ..modeling.roi_heads.roi_extractor import RoIExtractor, map_roi_levels
from ..modeling.rpn import flatten_level

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (torchvision's aligned=True) needs 16
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "masks"]
# NMS candidates excluded from a class get this score; NonMaxSuppression drops scores <= the threshold.
_EXCLUDED = -1.0
_NMS_SCORE_THRESHOLD = -0.5


class _ClassNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes ``(B, N, 4)``, scores ``(B, C, N)`` -> selected ``(M, 3)``.

    Rows are ``[batch, class, box]`` (int64), classes in order and, within a class, by decreasing
    score, as onnxruntime returns them. Only scores above ``_NMS_SCORE_THRESHOLD`` are candidates.
    The eager forward (used while tracing) is torchvision's ``nms`` per (batch, class).
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:  # noqa: D102
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                cand = torch.nonzero(scores[b, c] > _NMS_SCORE_THRESHOLD).flatten()
                keep = cand[nms(boxes[b, cand], scores[b, c, cand], iou_threshold)]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float):  # noqa: D102
        max_out = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.long))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float))
        thr = g.op("Constant", value_t=torch.tensor([_NMS_SCORE_THRESHOLD], dtype=torch.float))
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, thr)


def _length(x: Tensor) -> Tensor:
    """``len(x)`` as a 0-dim int64 tensor that the tracer records as a graph value, not a constant."""
    return torch._shape_as_tensor(x)[0]


def _keep_in_input_order_then_top(index: Tensor, scores: Tensor, k_max: int) -> Tensor:
    """Positions of the ``min(k_max, M)`` best ``scores``; ties go to the lower ``index``.

    This is the order of the eager path (torchvision's ``batched_nms`` lists survivors by input index,
    then sorts them by score; onnxruntime's TopK breaks ties by position).
    """
    by_index = torch.sort(index).indices
    s = scores[by_index]
    k = torch.clamp(_length(s), max=k_max)
    return by_index[torch.topk(s, k).indices]


def _roi_align_levels(extractor: RoIExtractor, feats: list[Tensor], boxes: Tensor) -> Tensor:
    """Multi-level RoIAlign of one image's ``boxes`` (K, 4), as ``RoIExtractor`` without branches.

    Each level pools its RoIs; the concatenated rows are put back in RoI order with one gather by the
    inverse permutation (a row gather, much cheaper in onnxruntime than a per-element scatter).
    """
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    n_lvls = len(extractor.strides)
    lvls = map_roi_levels(rois, n_lvls, extractor.finest_scale)
    pooled, order = [], []
    for lvl in range(n_lvls):
        idx = torch.nonzero(lvls == lvl).flatten()
        pooled.append(roi_align(
            feats[lvl], rois[idx], extractor.output_size, spatial_scale=1.0 / extractor.strides[lvl],
            sampling_ratio=0, aligned=True,
        ))
        order.append(idx)
    return torch.cat(pooled)[torch.argsort(torch.cat(order))]


class OnnxDetector(nn.Module):
    """One image in (uint8 ``[3, H, W]``), detections out; the model's own modules, traceable."""

    def __init__(self, model: SwinMaskRCNN) -> None:
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.register_buffer("mean", torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        cfg = m.cfg
        h, w = image.shape[-2], image.shape[-1]
        img_shape = (torch.as_tensor(h).float(), torch.as_tensor(w).float())  # clip bounds, float
        div = cfg.size_divisor
        x = (image.float() - self.mean) / self.std
        x = F.pad(x, (0, (-w) % div, 0, (-h) % div))[None]
        feats = m.neck(m.backbone(x))

        # RPN: per level top nms_pre, decode, clip, drop empty boxes, NMS per level, top max_per_img.
        rpn = m.rpn_head
        cls, reg = rpn.maps(feats)
        anchors = rpn.anchors(feats)
        scores_l, deltas_l, anchors_l, levels_l = [], [], [], []
        for lvl, (c, r, a) in enumerate(zip(cls, reg, anchors)):
            c, r = flatten_level(c, r)
            s = c[0].sigmoid()
            k = torch.clamp(_length(s), max=rpn.cfg.nms_pre_test)
            s, order = torch.topk(s, k)
            scores_l.append(s)
            deltas_l.append(r[0][order])
            anchors_l.append(a[order])
            levels_l.append(torch.full_like(order, lvl))
        scores = torch.cat(scores_l)
        levels = torch.cat(levels_l)
        boxes = rpn.coder.decode(torch.cat(anchors_l), torch.cat(deltas_l), max_shape=img_shape)
        valid = (boxes[:, 2] - boxes[:, 0] > rpn.cfg.min_bbox_size) & (boxes[:, 3] - boxes[:, 1] > rpn.cfg.min_bbox_size)
        per_level = (levels[None, :] == torch.arange(len(feats))[:, None]) & valid[None, :]
        masked = torch.where(per_level, scores[None, :], torch.full_like(per_level, _EXCLUDED, dtype=scores.dtype))
        sel = _ClassNMS.apply(boxes[None], masked[None], float(rpn.cfg.nms_iou))[:, 2]
        sel = sel[_keep_in_input_order_then_top(sel, scores[sel], rpn.cfg.max_per_img_test)]
        proposals = boxes[sel]

        # RoI heads: class-specific decode and clip, score > score_thr, NMS per class, top max_per_img.
        roi = m.roi_head
        rcfg = roi.cfg
        bbox_head = roi.bbox_head
        cls_score, bbox_pred = bbox_head(_roi_align_levels(roi.bbox_roi_extractor, feats[:4], proposals))
        nc = bbox_head.num_classes
        fg = bbox_head.class_scores(cls_score)[:, :nc]  # (K, C)
        kp = proposals.shape[0]
        det = bbox_head.coder.decode(
            proposals[:, None, :].expand(kp, nc, 4).reshape(-1, 4), bbox_pred.reshape(-1, 4), max_shape=img_shape
        ).view(kp, nc, 4)
        thrs = m.score_thresholds()  # roi.score_thr_per_class, baked into the graph as a constant
        keep = fg > rcfg.score_thr if thrs is None else fg >= thrs.to(fg)[None, :]
        masked = torch.where(keep, fg, torch.full_like(fg, _EXCLUDED))
        sel = _ClassNMS.apply(det.transpose(0, 1), masked.t()[:, None, :], float(rcfg.nms_iou))
        label, box = sel[:, 0], sel[:, 2]
        flat = box * nc + label  # the eager path's (box, class) order
        top = _keep_in_input_order_then_top(flat, fg[box, label], rcfg.max_per_img)
        label, box = label[top], box[top]
        out_boxes = det[box, label]
        out_scores = fg[box, label]

        mask_logits = roi.mask_head(_roi_align_levels(roi.mask_roi_extractor, feats[:4], out_boxes))
        ms = 2 * roi.mask_roi_extractor.output_size  # the mask head upsamples its RoI features 2x
        picked = torch.gather(mask_logits, 1, label.view(-1, 1, 1, 1).expand(-1, 1, ms, ms)).reshape(-1, ms, ms)
        return out_boxes, out_scores, label, picked.sigmoid()


def trace_size(window_size: int, size_divisor: int = 32) -> tuple[int, int]:
    """(H, W) of the example image: padded cell counts coprime with the window (see module doc)."""
    cells = [n for n in range(3, 100) if math.gcd(n, window_size) == 1][:2]
    return cells[0] * size_divisor - 5, cells[1] * size_divisor - 3


def _name_output_dims(proto: Any, mask_size: int) -> None:
    """Declare the outputs' shapes: ``num`` detections, then the fixed trailing sizes."""
    trailing = {"boxes": [4], "scores": [], "labels": [], "masks": [mask_size, mask_size]}
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "num"
        for size in trailing[out.name]:
            dims.add().dim_value = size


def export_metadata(model: SwinMaskRCNN) -> dict[str, Any]:
    """What a runtime needs beside the graph (stored as JSON strings in the model's metadata_props)."""
    meta: dict[str, Any] = {
        "mask_thr": model.cfg.roi.mask_thr,
        "score_thr": model.cfg.roi.score_thr,
        "score_thr_per_class": dict(model.cfg.roi.score_thr_per_class),
        "num_classes": model.cfg.num_classes,
        "model_config": model.cfg.model_dump(mode="json"),
    }
    meta["class_names"] = list(model.meta.class_names)
    if model.meta.label_to_cat_id:
        meta["label_to_cat_id"] = {str(k): int(v) for k, v in model.meta.label_to_cat_id.items()}
    return meta


def export_onnx(model: SwinMaskRCNN, out_path: Union[str, Path], opset: Optional[int] = None) -> Path:
    """Write ``model`` as one ONNX graph (image -> boxes, scores, labels, masks) to ``out_path``.

    ``opset`` defaults to 17 and must be >= 16. The model is exported on the CPU in eval mode (a copy;
    ``model`` itself is left as it was). Returns the path written.
    """
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'swin-maskrcnn[export]'") from e
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: RoiAlign with aligned=True needs opset >= {MIN_OPSET}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = OnnxDetector(copy.deepcopy(model).cpu().float().eval()).eval()
    th, tw = trace_size(model.cfg.window_size, model.cfg.size_divisor)
    example = torch.randint(0, 256, (3, th, tw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tmp = out_path.with_name(out_path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings about Python values are expected: the branches they freeze are chosen above.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "num"}, "scores": {0: "num"},
                          "labels": {0: "num"}, "masks": {0: "num"}},
            opset_version=opset,
        )
    proto = onnx.load(str(tmp))
    _name_output_dims(proto, 2 * model.roi_head.mask_roi_extractor.output_size)
    for key, value in export_metadata(model).items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out_path)
    log.info("wrote %s (opset %d, traced at %dx%d)", out_path, opset, th, tw)
    return out_path
