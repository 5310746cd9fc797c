"""Load ImageNet-pretrained Swin weights into our (mmdet-layout) backbone.

mmdet trains its COCO Swin models from the original Swin ImageNet checkpoints
(``swin_{tiny,small,base}_patch4_window7_224.pth``, ``{'model': state_dict}``); torchvision's
``swin_t/s/b`` weights hold the same math under other names. Both use the original patch-merging
channel order (x0, x1, x2, x3 = TL, BL, TR, BR, position-major), while ours is ``nn.Unfold``'s
(channel-major, TL, TR, BL, BR), so the merging weights are permuted, not just renamed. The final
``norm`` and the classifier ``head`` are dropped; ``norm0..norm3`` keep their fresh init (as mmdet);
the ``relative_position_index`` buffers are not copied (ours are built by the same formula).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor, nn

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


def _rename_original(key: str) -> str | None:
    """microsoft/Swin-Transformer names -> ours; None for keys we drop."""
    if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
        return None
    key = key.replace("patch_embed.proj.", "patch_embed.projection.")
    key = re.sub(r"^layers\.", "stages.", key)
    key = key.replace(".attn.", ".attn.w_msa.")
    key = key.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
    return key


def _rename_torchvision(key: str) -> str | None:
    """torchvision ``swin_t/s/b`` names -> ours; None for keys we drop."""
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
        rest = b.group(2).replace("attn.", "attn.w_msa.").replace("mlp.0.", "ffn.layers.0.0.").replace("mlp.3.", "ffn.layers.1.")
        return f"stages.{(idx - 1) // 2}.blocks.{b.group(1)}.{rest}"
    return f"stages.{(idx - 2) // 2}.downsample.{rest}"  # patch merging after stage (idx - 2) / 2


def convert_imagenet_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original-Swin or torchvision ImageNet state_dict -> our backbone's keys and channel order."""
    if any(k.startswith("features.") for k in sd):
        rename = _rename_torchvision
    elif any(k.startswith("layers.") for k in sd):
        rename = _rename_original
    else:
        raise ValueError("not a Swin ImageNet state_dict: expected 'layers.*' (original) or 'features.*' (torchvision) keys")
    out = {}
    for k, v in sd.items():
        new = rename(k)
        if new is None or new.endswith("relative_position_index"):
            continue  # the index is a fixed function of the window size; ours is built identically
        if ".downsample." in new:
            v = merging_to_unfold_order(v)
        out[new] = v
    return out


def load_imagenet_backbone(backbone: nn.Module, source: Union[str, Path, Mapping[str, Tensor]]) -> None:
    """Load ImageNet Swin weights (a file or a state_dict) into ``backbone``.

    Every backbone parameter except ``norm0..norm3`` must be provided and every provided key must be
    placed; otherwise a ValueError lists the keys. Files are read with ``weights_only=True``.
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
    converted = convert_imagenet_state_dict(sd)
    own = backbone.state_dict()
    missing = sorted(
        k for k in own if k not in converted and not re.match(r"norm\d\.", k) and not k.endswith("relative_position_index")
    )
    unexpected = sorted(k for k in converted if k not in own)
    bad_shape = sorted(k for k in converted if k in own and converted[k].shape != own[k].shape)
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{name}: cannot load into the Swin backbone: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {[(k, tuple(converted[k].shape), tuple(own[k].shape)) for k in bad_shape]}"
        )
    backbone.load_state_dict(converted, strict=False)
    log.info("loaded ImageNet Swin weights from %s (%d tensors; norm0-3 keep their init)", name, len(converted))
