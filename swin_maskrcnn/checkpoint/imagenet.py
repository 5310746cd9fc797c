"""Load ImageNet-pretrained Swin weights (V1 or V2) into our backbones.

V1: mmdet trains its COCO Swin models from the original Swin ImageNet checkpoints
(``swin_{tiny,small,base}_patch4_window7_224.pth``, ``{'model': state_dict}``); torchvision's
``swin_t/s/b`` weights hold the same math under other names. Both use the original patch-merging
channel order (x0, x1, x2, x3 = TL, BL, TR, BR, position-major), while ours is ``nn.Unfold``'s
(channel-major, TL, TR, BL, BR), so the merging weights are permuted, not just renamed.

V2 (recognised by its ``logit_scale`` / ``cpb_mlp`` tensors): torchvision's ``swin_v2_t/s/b``
state_dicts and the original Swin V2 release (microsoft/Swin-Transformer ``swin_transformer_v2.py``
files, ``{'model': ...}``, whose attention has ``q_bias`` / ``v_bias`` and a bias-free ``qkv``).
Our V2 merging keeps the x0..x3 order, so only names change; the original's ``q_bias`` / ``v_bias``
become ``qkv.bias = cat(q_bias, 0, v_bias)``, which is exact because the key third of the bias is
zeroed in every forward (by both implementations and ours).

The final ``norm`` and the classifier ``head`` are dropped; ``norm0..norm3`` keep their fresh init
(as mmdet); the ``relative_position_index`` / ``relative_coords_table`` / ``attn_mask`` buffers are
not copied (ours are built by the same formulas for the configured window). A V2 file whose
coordinate table was normalised for another window than our ``pretrained_window_size`` is loaded
with a warning that names both.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from ..modeling.backbone.swin_v2 import coords_table_windows

log = logging.getLogger(__name__)

# Original position k (x0..x3) of each Unfold position p (TL, TR, BL, BR).
_UNFOLD_FROM_ORIGINAL = (0, 2, 1, 3)


def merging_to_unfold_order(t: Tensor) -> Tensor:
    """Permute a patch-merging tensor from the original x0..x3 order to ``nn.Unfold`` order.

    ``t`` is the reduction weight (2C, 4C) or the norm weight/bias (4C,); the 4C axis is last.
    Original index k*C + c  ->  Unfold index c*4 + p, with k = _UNFOLD_FROM_ORIGINAL[p].
    """
    c4 = t.shape[-1]
    c = c4 // 4
    x = t.reshape(*t.shape[:-1], 4, c)  # (..., k, c)
    x = x[..., list(_UNFOLD_FROM_ORIGINAL), :]  # (..., p, c)
    return x.transpose(-1, -2).reshape(*t.shape[:-1], c4)  # (..., c, p)


def _rename_original(key: str) -> str | None:  # V1 and V2 (same module names)
    """microsoft/Swin-Transformer names -> ours; None for keys we drop."""
    if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
        return None
    key = key.replace("patch_embed.proj.", "patch_embed.projection.")
    key = re.sub(r"^layers\.", "stages.", key)
    key = key.replace(".attn.", ".attn.w_msa.")
    key = key.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
    return key


def _rename_torchvision(key: str) -> str | None:
    """torchvision ``swin_t/s/b`` and ``swin_v2_t/s/b`` names -> ours; None for keys we drop."""
    if key.startswith(("head.", "norm.")):
        return None
    if key.startswith("features.0.0."):
        return key.replace("features.0.0.", "patch_embed.projection.")
    if key.startswith("features.0.2."):
        return key.replace("features.0.2.", "patch_embed.norm.")
    m = re.match(r"features\.(\d+)\.(.*)$", key)
    if m is None:
        return key
    idx, rest = int(m.group(1)), m.group(2)
    if idx % 2 == 1:  # blocks of stage (idx - 1) / 2
        b = re.match(r"(\d+)\.(.*)$", rest)
        if b is None:
            return key
        rest = b.group(2)  # anchored: V2's "attn.cpb_mlp.0." must not read as the block's "mlp.0."
        for pattern, repl in ((r"^attn\.", "attn.w_msa."), (r"^mlp\.0\.", "ffn.layers.0.0."), (r"^mlp\.3\.", "ffn.layers.1.")):
            rest = re.sub(pattern, repl, rest)
        return f"stages.{(idx - 1) // 2}.blocks.{b.group(1)}.{rest}"
    return f"stages.{(idx - 2) // 2}.downsample.{rest}"  # patch merging after stage (idx - 2) / 2


#: tensors (key suffixes) that only a Swin V2 state_dict has
_V2_MARKERS = (".logit_scale", ".cpb_mlp.0.weight")
#: buffers of the files that ours rebuild from the window size (never copied)
_REBUILT_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def is_swin_v2_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """True for a Swin V2 state_dict (torchvision's or the original release's)."""
    return any(k.endswith(_V2_MARKERS) for k in sd)


def _merge_qv_bias(out: dict[str, Tensor]) -> None:
    """Original-V2 ``w_msa.q_bias`` / ``w_msa.v_bias`` -> ``w_msa.qkv.bias = cat(q, 0, v)`` (in place)."""
    for qk in [k for k in out if k.endswith(".attn.w_msa.q_bias")]:
        prefix = qk[: -len("q_bias")]
        q, v = out.pop(qk), out.pop(prefix + "v_bias")
        out[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])


def convert_imagenet_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original-Swin or torchvision ImageNet state_dict (V1 or V2) -> our backbone's keys and channel order."""
    if any(k.startswith("features.") for k in sd):
        rename = _rename_torchvision
    elif any(k.startswith("layers.") for k in sd):
        rename = _rename_original
    else:
        raise ValueError("not a Swin ImageNet state_dict: expected 'layers.*' (original) or 'features.*' (torchvision) keys")
    v2 = is_swin_v2_state_dict(sd)
    out = {}
    for k, v in sd.items():
        new = rename(k)
        if new is None or new.endswith(_REBUILT_BUFFERS):
            continue  # a fixed function of the window size; ours is built identically
        if ".downsample." in new and not v2:  # V2 merging keeps the original x0..x3 order
            v = merging_to_unfold_order(v)
        out[new] = v
    if v2:
        _merge_qv_bias(out)
    return out


def _check_coords_tables(name: str, sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Warn when the file's V2 coordinate table was normalised by another pretrained window than ours."""
    theirs = next((v for k, v in sd.items() if k.endswith("relative_coords_table")), None)
    ours = next((v for k, v in own.items() if k.endswith("relative_coords_table")), None)
    if theirs is None or ours is None:
        return
    file_w, file_p = coords_table_windows(theirs)
    w, p = coords_table_windows(ours)
    if abs(file_p - p) > 1e-3:
        log.warning(
            "%s: its position-bias coordinate table is normalised by a pretrained window of %.4g (window %d), "
            "this backbone's by %.4g (window %d); set model.pretrained_window_size=%d to use the weights as trained",
            name, file_p, file_w, p, w, round(file_p),
        )


def load_imagenet_backbone(backbone: nn.Module, source: Union[str, Path, Mapping[str, Tensor]]) -> None:
    """Load ImageNet Swin weights (a file or a state_dict, V1 or V2) into ``backbone``.

    Every backbone parameter except ``norm0..norm3`` must be provided and every provided key must be
    placed; otherwise a ValueError lists the keys (a V1 file for a V2 backbone or the reverse is
    named as such). Files are read with ``weights_only=True``.
    """
    name = str(source) if not isinstance(source, Mapping) else "state_dict"
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        obj = torch.load(source, map_location="cpu", weights_only=True)
        sd = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, Mapping) else obj
        if not isinstance(sd, Mapping):
            raise ValueError(f"{name}: expected a state_dict or {{'model': state_dict}}")
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    own = backbone.state_dict()
    file_v2, model_v2 = is_swin_v2_state_dict(sd), is_swin_v2_state_dict(own)
    if file_v2 != model_v2:
        raise ValueError(
            f"{name}: holds Swin {'V2' if file_v2 else 'V1'} weights but the backbone is Swin "
            f"{'V2' if model_v2 else 'V1'} (model.variant / model.backbone_version)"
        )
    converted = convert_imagenet_state_dict(sd)
    missing = sorted(
        k for k in own
        if k not in converted and not re.match(r"norm\d\.", k) and not k.endswith(_REBUILT_BUFFERS)
    )
    unexpected = sorted(k for k in converted if k not in own)
    bad_shape = sorted(k for k in converted if k in own and converted[k].shape != own[k].shape)
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{name}: cannot load into the Swin backbone: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {[(k, tuple(converted[k].shape), tuple(own[k].shape)) for k in bad_shape]}"
        )
    if model_v2:
        _check_coords_tables(name, sd, own)
    backbone.load_state_dict(converted, strict=False)
    log.info(
        "loaded ImageNet Swin %s weights from %s (%d tensors; norm0-3 keep their init)",
        "V2" if model_v2 else "V1", name, len(converted),
    )
