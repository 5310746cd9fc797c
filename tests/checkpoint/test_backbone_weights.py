"""ImageNet Swin weights (torchvision and original-repo layouts) load into our backbone.

Reference: torchvision's own ``swin_t`` forward. An original-repo checkpoint is written from the
torchvision weights with the original names (the two share the x0..x3 merging order), so both
paths of the converter are checked against torchvision's features.
"""
from __future__ import annotations

import re

import pytest
import torch
from torchvision.models import swin_t
from torchvision.models.swin_transformer import SwinTransformer as TVSwin

from swin_maskrcnn.checkpoint.imagenet import load_imagenet_backbone, merging_to_unfold_order
from swin_maskrcnn.modeling.backbone.swin import SwinTransformer


def tv_to_original(sd: dict) -> dict:
    """torchvision names -> microsoft/Swin-Transformer names (values unchanged)."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("features.0.0.", "patch_embed.proj.").replace("features.0.2.", "patch_embed.norm.")
        m = re.match(r"features\.(\d+)\.(.*)$", k2)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2 == 1:
                b, r = rest.split(".", 1)
                r = r.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                k2 = f"layers.{(idx - 1) // 2}.blocks.{b}.{r}"
            else:
                k2 = f"layers.{(idx - 2) // 2}.downsample.{rest}"
        out[k2] = v
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(1)  # original checkpoints carry these buffers
    return out


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    m = swin_t(weights=None).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def tv_stage_features(tv: TVSwin, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's per-stage outputs before each patch merging, NHWC."""
    outs = []
    for i, layer in enumerate(tv.features):
        x = layer(x)
        if i in (1, 3, 5, 7):
            outs.append(x)
    return outs


@pytest.mark.parametrize("layout", ["torchvision", "original"])
def test_imagenet_weights_reproduce_torchvision_features(tv_model, layout, tmp_path):
    ours = SwinTransformer(drop_path_rate=0.0).eval()
    sd = tv_model.state_dict()
    if layout == "original":
        path = tmp_path / "swin_tiny_patch4_window7_224.pth"
        torch.save({"model": tv_to_original(sd)}, path)
        load_imagenet_backbone(ours, path)
    else:
        load_imagenet_backbone(ours, sd)
    # Make norm_i the identity affine of a plain LayerNorm so we compare pre-norm features.
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        ref = tv_stage_features(tv_model, x)
        got = ours(x)
    for i, (g, r) in enumerate(zip(got, ref)):
        norm = getattr(ours, f"norm{i}")
        expected = torch.nn.functional.layer_norm(r, r.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
        assert (g - expected).abs().max().item() < 1e-4, i


def test_merging_permutation_matches_hand_case():
    c = 3
    original = torch.arange(4 * c, dtype=torch.float32)  # index k*C + c
    unfold = merging_to_unfold_order(original)
    # Unfold index c*4 + p holds original k*C + c with k = (0, 2, 1, 3)[p]  (TL, TR, BL, BR <- x0, x2, x1, x3)
    expected = [k * c + ch for ch in range(c) for k in (0, 2, 1, 3)]
    assert unfold.tolist() == expected
    # Inverse permutation stated in the reference for C = 3.
    inv = [0, 4, 8, 2, 6, 10, 1, 5, 9, 3, 7, 11]
    assert [int(unfold.tolist().index(float(i))) for i in range(4 * c)] == inv


def test_unplaceable_keys_are_listed():
    ours = SwinTransformer(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="missing"):
        load_imagenet_backbone(ours, {"layers.0.blocks.0.norm1.weight": torch.ones(32)})
    with pytest.raises(ValueError, match="not a Swin ImageNet state_dict"):
        load_imagenet_backbone(ours, {"foo": torch.ones(1)})
