"""Fine-tuning onto new classes: keep the class-specific rows of an init checkpoint by class name.

With class names on both sides (the dataset's and the checkpoint's meta: ours, or mmdet's
``dataset_meta.classes`` / ``CLASSES``), every dataset class found in the checkpoint (after the
``init.class_map`` override {dataset_name: checkpoint_name}) gets its row of ``fc_cls`` (the
background row, last on both sides, is always copied), its four rows of ``fc_reg`` and its channel of
``conv_logits`` (weight and bias); the other classes keep the model's fresh initialisation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import Tensor

from ..errors import CheckpointError, ConfigError
from ..io_utils import atomic_write

__all__ = ["match_classes", "transfer_class_rows", "write_transfer_report", "format_transfer_report"]

log = logging.getLogger(__name__)

FC_CLS = "roi_head.bbox_head.fc_cls."
FC_REG = "roi_head.bbox_head.fc_reg."
CONV_LOGITS = "roi_head.mask_head.conv_logits."


def match_classes(dataset_names: Sequence[str], ckpt_names: Sequence[str],
                  class_map: Optional[Mapping[str, str]] = None) -> list[Optional[int]]:
    """For each dataset class, the checkpoint's index of the class it takes (by name, or by
    ``class_map``), None when it is new. A class_map naming an unknown class is a ConfigError."""
    class_map = dict(class_map or {})
    for ds_name, ck_name in class_map.items():
        if ds_name not in dataset_names:
            raise ConfigError(f"init.class_map: {ds_name!r} is not a dataset class (dataset classes: "
                              f"{', '.join(dataset_names)})")
        if ck_name not in ckpt_names:
            raise ConfigError(f"init.class_map: {ds_name!r} -> {ck_name!r}: {ck_name!r} is not a class of the "
                              f"checkpoint (checkpoint classes: {', '.join(ckpt_names[:20])}"
                              f"{', ...' if len(ckpt_names) > 20 else ''})")
    index = {n: i for i, n in enumerate(ckpt_names)}
    return [index.get(class_map.get(n, n)) for n in dataset_names]


def transfer_class_rows(sd: dict[str, Tensor], own: Mapping[str, Tensor], dataset_names: Sequence[str],
                        ckpt_names: Sequence[str], class_map: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Replace ``sd``'s class-specific tensors by ``own``'s (fresh init) with the matched rows copied
    from the checkpoint; returns the transfer report (per class and per tensor)."""
    n_new, n_old = len(dataset_names), len(ckpt_names)
    src_of = match_classes(dataset_names, ckpt_names, class_map)
    expected_rows = {FC_CLS: (n_old + 1, n_new + 1, 1), FC_REG: (4 * n_old, 4 * n_new, 4), CONV_LOGITS: (n_old, n_new, 1)}
    tensors = {}
    for prefix, (rows_old, rows_new, per) in expected_rows.items():
        for p in ("weight", "bias"):
            k = prefix + p
            if k not in sd or k not in own:
                continue
            src, dst = sd[k], own[k].clone()
            if src.shape[0] != rows_old or dst.shape[0] != rows_new or src.shape[1:] != dst.shape[1:]:
                raise CheckpointError(
                    f"init.checkpoint: {k} has shape {tuple(src.shape)}, the checkpoint's {n_old} class names "
                    f"need {rows_old} rows (the model: {tuple(dst.shape)})")
            copied = 0
            for i, j in enumerate(src_of):
                if j is not None:
                    dst[i * per:(i + 1) * per] = src[j * per:(j + 1) * per]
                    copied += 1
            if prefix == FC_CLS:
                dst[-1] = src[-1]  # background, last on both sides
            sd[k] = dst
            tensors[k] = {"rows_copied": copied * per + (1 if prefix == FC_CLS else 0),
                          "rows_fresh": (n_new - copied) * per}
    classes = [{"class": n, "source": None if j is None else (class_map or {}).get(n, n),
                "source_index": j} for n, j in zip(dataset_names, src_of)]
    return {"classes": classes, "class_tensors": tensors, "checkpoint_classes": list(ckpt_names)}


def format_transfer_report(report: Mapping[str, Any]) -> str:
    """The report as text: a summary line, then "dog <- dog (16)" / "widget: new" per class."""
    lines = [f"init {report['checkpoint']} ({report['source']}): {report['tensors_loaded']} tensors loaded, "
             f"{report['tensors_reinitialised']} re-initialised"
             + (f", {len(report['tensors_partial'])} by class" if report.get("tensors_partial") else "")]
    for k in report.get("tensors_reinitialised_keys", []):
        lines.append(f"  fresh: {k}")
    for c in report.get("classes") or []:
        lines.append(f"{c['class']}: new" if c["source_index"] is None else
                     f"{c['class']} <- {c['source']} ({c['source_index']})")
    return "\n".join(lines) + "\n"


def write_transfer_report(report: Mapping[str, Any], run_dir: Path) -> tuple[Path, Path]:
    """transfer_report.json and transfer_report.txt in the run folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    j = atomic_write(run_dir / "transfer_report.json", lambda f: f.write(json.dumps(report, indent=2)))
    t = atomic_write(run_dir / "transfer_report.txt", lambda f: f.write(format_transfer_report(report)))
    return j, t


