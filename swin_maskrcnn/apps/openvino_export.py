"""``export --format openvino``: our ONNX graph converted to an OpenVINO IR (``model.xml`` + ``.bin``).

The IR is converted from the graph :func:`~swin_maskrcnn.apps.onnx_export.export_onnx` writes
(``openvino.convert_model`` of a temporary ``.onnx``), so both runtimes execute the same operators
with the same weights; the weights stay fp32 in the ``.bin`` (``compress_to_fp16=False``): bf16 or
fp32 is chosen when the model is compiled (:class:`~swin_maskrcnn.apps.openvino_runtime.OpenVinoPredictor`,
``INFERENCE_PRECISION_HINT``). What a runtime needs beside the graph (mask threshold, class names,
category ids, the model config) is written as JSON beside it (``model.json`` for ``model.xml``,
the same keys as the ONNX file's ``metadata_props``). Needs the ``[openvino]`` and ``[export]`` extras.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Union

from ..modeling.detector import SwinMaskRCNN
from .onnx_export import export_metadata, export_onnx

log = logging.getLogger(__name__)

__all__ = ["export_openvino", "metadata_path"]


def metadata_path(xml_path: Union[str, Path]) -> Path:
    """The JSON beside an IR: ``model.xml`` -> ``model.json``."""
    return Path(xml_path).with_suffix(".json")


def export_openvino(model: SwinMaskRCNN, out_path: Union[str, Path]) -> Path:
    """Write ``model`` as an OpenVINO IR at ``out_path`` (``.xml``; the weights go to the ``.bin`` beside
    it) plus its metadata JSON (:func:`metadata_path`). Returns the ``.xml`` path."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs the 'openvino' package: pip install 'swin-maskrcnn[openvino]'") from e
    out_path = Path(out_path)
    if out_path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "graph.onnx")
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(out_path), compress_to_fp16=False)
    meta = metadata_path(out_path)
    meta.write_text(json.dumps(export_metadata(model), indent=1))
    log.info("wrote %s (+ %s, %s)", out_path, out_path.with_suffix(".bin").name, meta.name)
    return out_path
