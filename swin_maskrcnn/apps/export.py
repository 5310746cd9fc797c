"""``swin-maskrcnn export``: a checkpoint in another format.

    swin-maskrcnn export --format safetensors --checkpoint C --out model.safetensors
    swin-maskrcnn export --format onnx --checkpoint C --out model.onnx [--opset N]
    swin-maskrcnn export --format openvino --checkpoint C --out model.xml

``C`` is anything :func:`swin_maskrcnn.load_model` reads. ``safetensors``: the weights, with the model
config, class names, dataset category ids (and the training config and step when known) as JSON
metadata; ``load_model`` reads it back exactly, and loading it runs no pickle. ``onnx``: delegated to
:func:`swin_maskrcnn.apps.onnx_export.export_onnx` (needs the ``[export]`` extra). ``openvino``: that graph
converted to an OpenVINO IR, the metadata as JSON beside it
(:func:`swin_maskrcnn.apps.openvino_export.export_openvino`, the ``[openvino]`` extra too).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional

from .options import HelpFormatter

log = logging.getLogger(__name__)

__all__ = ["export_safetensors", "register_subcommand"]


def export_safetensors(checkpoint: Any, out: Any, **overrides: Any) -> Path:
    """Write ``checkpoint`` (any format ``load_model`` reads) as our safetensors file; returns the path.
    ``overrides`` (e.g. ``roi={"score_thr_per_class": {...}}``) change the stored model config."""
    from ..checkpoint.loader import load_checkpoint
    from ..checkpoint.native import build_meta, save_safetensors

    model, cfg, meta = load_checkpoint(checkpoint, **overrides)
    out_meta = build_meta(cfg, meta["class_names"], meta["cat_id_to_label"], meta.get("global_step"))
    out_meta["train_config"] = meta.get("train_config")
    return save_safetensors(out, model, out_meta)


_ONNX_MODULES = ("swin_maskrcnn.apps.onnx_export", "onnx", "onnxruntime")


class OnnxUnavailable(RuntimeError):
    """The ONNX exporter or its packages are not installed."""


class OnnxArgumentError(ValueError):
    """The exporter rejected an argument (``--opset``)."""


def _onnx_unavailable(e: ImportError) -> OnnxUnavailable:
    return OnnxUnavailable(
        f"ONNX export is not available here ({e}): it needs swin_maskrcnn.apps.onnx_export and the [export] extra "
        "(pip install 'swin-maskrcnn[export]')"
    )


def thresholds_from_analysis(path: Any) -> dict[str, float]:
    """``{class name: score}`` of an ``analyze`` output's ``thresholds.per_class``."""
    import json

    from ..training.config import ConfigError

    try:
        with open(path, "r", encoding="utf-8") as f:
            per_class = json.load(f)["thresholds"]["per_class"]
        return {str(k): float(v["score"]) for k, v in per_class.items()}
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not an analysis.json with thresholds.per_class ({type(e).__name__}: {e})") from None


def _export_onnx(checkpoint: str, out: str, opset: Optional[int], **overrides: Any) -> Path:
    """``export_onnx(model, out, opset=...)`` of :mod:`swin_maskrcnn.apps.onnx_export` on the loaded checkpoint."""
    try:
        from .onnx_export import export_onnx
    except ModuleNotFoundError as e:
        if e.name not in _ONNX_MODULES:
            raise
        raise _onnx_unavailable(e) from None
    from ..checkpoint.loader import load_model

    model = load_model(checkpoint, **overrides)
    kwargs = {} if opset is None else {"opset": opset}
    try:
        written = export_onnx(model, out, **kwargs)
    except ImportError as e:  # onnx imported lazily by the exporter
        if getattr(e, "name", None) not in (None, *_ONNX_MODULES):
            raise
        raise _onnx_unavailable(e) from None
    except ValueError as e:  # an argument the exporter rejects (e.g. an opset that is too old)
        raise OnnxArgumentError(f"--format onnx: {e}") from None
    return Path(written) if written is not None else Path(out)


def _export_openvino(checkpoint: str, out: str, **overrides: Any) -> Path:
    """:func:`swin_maskrcnn.apps.openvino_export.export_openvino` of the loaded checkpoint."""
    from ..checkpoint.loader import load_model

    try:
        from .openvino_export import export_openvino
    except ModuleNotFoundError as e:
        if e.name not in _ONNX_MODULES:
            raise
        raise _onnx_unavailable(e) from None
    model = load_model(checkpoint, **overrides)
    try:
        return export_openvino(model, out)
    except ImportError as e:
        if getattr(e, "name", None) not in (None, "openvino", *_ONNX_MODULES):
            raise
        raise OnnxUnavailable(f"OpenVINO export is not available here ({e}): it needs the [openvino] and [export] "
                              "extras (pip install 'swin-maskrcnn[openvino,export]')") from None
    except ValueError as e:
        raise OnnxArgumentError(f"--format openvino: {e}") from None


def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as safetensors (weights + model config) or ONNX",
        description=(
            "Export a checkpoint (ours .pt/.safetensors, a Lightning .ckpt from 'train', or an mmdet .pth). "
            "safetensors: the weights with the model config, class names and dataset category ids as metadata, "
            "read back exactly by swin_maskrcnn.load_model. onnx: one graph from a uint8 image to detections."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "openvino"],
                   help="output format (openvino: --out NAME.xml, writes NAME.bin and NAME.json beside it)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file to export")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (onnx only; default: the exporter's)")
    p.add_argument("--thresholds", metavar="ANALYSIS_JSON", default=None,
                   help="store the per-class thresholds of 'analyze' (its analysis.json) as roi.score_thr_per_class")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    overrides: dict[str, Any] = {}
    if args.thresholds:
        overrides["roi"] = {"score_thr_per_class": thresholds_from_analysis(args.thresholds)}
    if args.format == "safetensors":
        if args.opset is not None:
            raise ConfigError("--opset applies to --format onnx only")
        path = export_safetensors(args.checkpoint, args.out, **overrides)
    elif args.format == "openvino":
        if args.opset is not None:
            raise ConfigError("--opset applies to --format onnx only")
        try:
            path = _export_openvino(args.checkpoint, args.out, **overrides)
        except (OnnxUnavailable, OnnxArgumentError) as e:
            raise ConfigError(str(e)) from None
    else:
        try:
            path = _export_onnx(args.checkpoint, args.out, args.opset, **overrides)
        except (OnnxUnavailable, OnnxArgumentError) as e:
            raise ConfigError(str(e)) from None
    print(f"wrote {path}")
    return 0
