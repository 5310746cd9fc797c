"""Swin V2 backbone: our four stage outputs equal torchvision's ``swin_v2_t`` / ``swin_v2_s``.

Reference: torchvision's own model with random weights (no download), loaded through
``load_imagenet_backbone``; we compare with ``layer_norm`` of its ``features[1, 3, 5, 7]`` outputs.
Inputs: 256 x 256 (every stage a window multiple), 224 x 288 (multiples of 32 whose stages 1-3 need
padding to the window of 8) and 96 x 160 (last stage 3 x 5, smaller than the window; stage 2 is
6 x 10, so its shifted blocks shift along W only). The original release's layout (``q_bias`` /
``v_bias``, ``layers.*``) is written from the torchvision weights with the names of
microsoft/Swin-Transformer's ``swin_transformer_v2.py``.
"""
from __future__ import annotations

import copy
import logging
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import swin_v2_b, swin_v2_s, swin_v2_t
from torchvision.models.swin_transformer import PatchMergingV2 as TVPatchMergingV2
from torchvision.models.swin_transformer import ShiftedWindowAttentionV2, SwinTransformerBlockV2
from torchvision.models.swin_transformer import SwinTransformer as TVSwin

from swin_maskrcnn.checkpoint.imagenet import load_imagenet_backbone
from swin_maskrcnn.modeling.backbone.swin import SwinTransformer
from swin_maskrcnn.modeling.backbone.swin_v2 import (
    MAX_LOGIT_SCALE,
    ShiftWindowMSAV2,
    SwinTransformerV2,
    WindowMSAV2,
    coords_table_windows,
    log_spaced_coords,
)
from swin_maskrcnn.modeling.config import ModelConfig, tiny_model_config
from swin_maskrcnn.modeling.detector import SwinMaskRCNN

SIZES = [(256, 256), (224, 288), (96, 160)]
ARCHS = {
    "swin_v2_t": (swin_v2_t, dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))),
    "swin_v2_s": (swin_v2_s, dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))),
    "swin_v2_b": (swin_v2_b, dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))),
}


def perturbed_torchvision(build, clamped_head: bool = False) -> TVSwin:
    """torchvision V2 with random weights away from the init: every tensor jittered, the key bias
    non-zero (it must be ignored), logit scales and the bias MLP moved further; ``clamped_head``
    sets head 0 of every block above the clamp (log 300 -> log 100)."""
    torch.manual_seed(0)
    m = build(weights=None).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "cpb_mlp" in name or "logit_scale" in name else 0.02))
            if clamped_head and name.endswith("logit_scale"):
                p[0] = math.log(300.0)
    return m


def tv_stage_features(tv: TVSwin, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's outputs of features[1], [3], [5], [7] (before each merging), NHWC."""
    outs = []
    for i, layer in enumerate(tv.features):
        x = layer(x)
        if i in (1, 3, 5, 7):
            outs.append(x)
    return outs


def tv_v2_to_original(sd: dict) -> dict:
    """torchvision V2 names -> the original Swin V2 release's (``q_bias`` / ``v_bias``, bias-free qkv)."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("features.0.0.", "patch_embed.proj.").replace("features.0.2.", "patch_embed.norm.")
        m = re.match(r"features\.(\d+)\.(.*)$", k2)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2 == 1:
                b, r = rest.split(".", 1)
                r = re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", r))
                k2 = f"layers.{(idx - 1) // 2}.blocks.{b}.{r}"
            else:
                k2 = f"layers.{(idx - 2) // 2}.downsample.{rest}"
        if k2.endswith("attn.qkv.bias"):
            q, _, vb = v.chunk(3)
            out[k2.replace("qkv.bias", "q_bias")] = q
            out[k2.replace("qkv.bias", "v_bias")] = vb
            continue
        out[k2] = v
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(1)  # the original files carry these buffers
    return out


def assert_equal_to_torchvision(ours: torch.nn.Module, tv: TVSwin, size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        got = ours(x)
        ref = tv_stage_features(tv, x)
    assert len(got) == 4
    for i, (g, r) in enumerate(zip(got, ref)):
        norm = getattr(ours, f"norm{i}")
        expected = F.layer_norm(r, r.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
        assert g.shape == expected.shape == (1, ours.out_channels[i], size[0] // 2 ** (i + 2), size[1] // 2 ** (i + 2))
        rel = ((g - expected).norm() / expected.norm()).item()
        assert rel <= 1e-5, (size, i, rel)


@pytest.fixture(scope="module")
def tv_t() -> TVSwin:
    return perturbed_torchvision(swin_v2_t)


@pytest.fixture(scope="module")
def ours_t(tv_t) -> SwinTransformerV2:
    ours = SwinTransformerV2(**ARCHS["swin_v2_t"][1], drop_path_rate=0.0).eval()
    load_imagenet_backbone(ours, tv_t.state_dict())
    with torch.no_grad():  # output norms away from the identity, applied to the reference too
        for i in range(4):
            getattr(ours, f"norm{i}").weight.uniform_(0.5, 1.5)
            getattr(ours, f"norm{i}").bias.normal_(0, 0.1)
    return ours


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_swin_v2_t_stage_outputs_equal_torchvision(ours_t, tv_t, size):
    assert_equal_to_torchvision(ours_t, tv_t, size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_explicit_attention_path_equals_torchvision_too(ours_t, tv_t, size, monkeypatch):
    monkeypatch.setattr(WindowMSAV2, "forward", _explicit_forward(WindowMSAV2.forward))
    assert_equal_to_torchvision(ours_t, tv_t, size)


def _explicit_forward(forward):
    def explicit(self, x, mask=None):
        self.use_sdpa = False
        try:
            return forward(self, x, mask)
        finally:
            self.use_sdpa = True

    return explicit


@pytest.mark.slow
def test_swin_v2_s_stage_outputs_equal_torchvision():
    tv = perturbed_torchvision(swin_v2_s)
    ours = SwinTransformerV2(**ARCHS["swin_v2_s"][1], drop_path_rate=0.0).eval()
    load_imagenet_backbone(ours, tv.state_dict())
    for size in SIZES:
        assert_equal_to_torchvision(ours, tv, size)


def test_heads_above_the_clamp_explicit_path_exact_fused_path_as_accurate(monkeypatch):
    """Head 0 of every block at the logit-scale clamp (logits up to +-100, very peaked softmax):
    the explicit path still equals torchvision; the fused path differs from it by float32 rounding of
    that size (~1e-5), so it is held to the float64 truth: no further from it than torchvision's own
    float32 forward (within 1.5x)."""
    tv = perturbed_torchvision(swin_v2_t, clamped_head=True)
    ours = SwinTransformerV2(**ARCHS["swin_v2_t"][1], drop_path_rate=0.0).eval()
    load_imagenet_backbone(ours, tv.state_dict())
    torch.manual_seed(1)
    x = torch.randn(1, 3, *SIZES[2])
    with torch.no_grad():
        fused = ours(x)
        truth = [F.layer_norm(f, f.shape[-1:]).permute(0, 3, 1, 2) for f in tv_stage_features(copy.deepcopy(tv).double(), x.double())]
        tv32 = [F.layer_norm(f, f.shape[-1:]).permute(0, 3, 1, 2) for f in tv_stage_features(tv, x)]
    for f, t, r in zip(fused, truth, tv32):
        err_ours = ((f.double() - t).norm() / t.norm()).item()
        err_tv = ((r.double() - t).norm() / t.norm()).item()
        assert err_ours <= 1.5 * err_tv + 1e-7, (err_ours, err_tv)
    monkeypatch.setattr(WindowMSAV2, "forward", _explicit_forward(WindowMSAV2.forward))
    assert_equal_to_torchvision(ours, tv, SIZES[2])


def test_original_release_layout_loads_exactly(tv_t, tmp_path):
    path = tmp_path / "swinv2_tiny_patch4_window8_256.pth"
    torch.save({"model": tv_v2_to_original(tv_t.state_dict())}, path)
    ours = SwinTransformerV2(**ARCHS["swin_v2_t"][1], drop_path_rate=0.0).eval()
    load_imagenet_backbone(ours, path)
    qkv_bias = ours.stages[0].blocks[0].attn.w_msa.qkv.bias
    assert torch.equal(qkv_bias[96:192], torch.zeros(96))  # the original has no key bias
    assert_equal_to_torchvision(ours, tv_t, SIZES[1])


@pytest.mark.parametrize("arch", ["swin_v2_t", *(pytest.param(a, marks=pytest.mark.slow) for a in ("swin_v2_s", "swin_v2_b"))])
def test_parameter_count_is_torchvision_features_plus_four_output_norms(arch):
    build, spec = ARCHS[arch]
    tv = build(weights=None)
    ours = SwinTransformerV2(**spec)
    norms = sum(2 * spec["embed_dims"] * 2**i for i in range(4))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.features.parameters()) + norms
    # the same tensors, key for key, once renamed (buffers rebuilt, classifier dropped)
    n_tv = sum(1 for k, _ in tv.features.named_parameters())
    assert len(list(ours.parameters())) == n_tv + 8


@pytest.mark.parametrize("H,W", [(16, 16), (9, 20), (8, 13), (5, 4), (1, 1), (17, 8)])
@pytest.mark.parametrize("shift", [0, 4])
def test_window_attention_equals_torchvision_module(H, W, shift):
    """One (shifted) window attention at sizes needing padding, per-axis or no shift."""
    torch.manual_seed(2)
    dim, heads, w = 32, 4, 8
    tv = ShiftedWindowAttentionV2(dim, [w, w], [shift, shift], heads).eval()
    with torch.no_grad():
        for p in tv.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = ShiftWindowMSAV2(dim, heads, w, shift).eval()
    sd = {k: v for k, v in tv.state_dict().items() if k not in ("relative_coords_table", "relative_position_index")}
    ours.w_msa.load_state_dict(sd, strict=False)
    x = torch.randn(2, H, W, dim)
    with torch.no_grad():
        expected = tv(x)
        got = ours(x.view(2, H * W, dim), (H, W)).view(2, H, W, dim)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


def test_fused_sdpa_equals_explicit_attention():
    torch.manual_seed(3)
    msa = WindowMSAV2(32, 4, 8).eval()
    with torch.no_grad():
        for p in msa.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2 * 6, 64, 32)
    mask = torch.zeros(6, 64, 64).masked_fill(torch.rand(6, 64, 64) < 0.3, -100.0)
    for m in (None, mask):
        with torch.no_grad():
            fused = msa(x, m)
            msa.use_sdpa = False
            explicit = msa(x, m)
            msa.use_sdpa = True
        assert torch.allclose(fused, explicit, rtol=1e-5, atol=1e-5), (fused - explicit).abs().max()
        assert ((fused - explicit).norm() / explicit.norm()).item() < 1e-6


def test_logit_scale_is_clamped_at_log_100():
    msa = WindowMSAV2(8, 1, 2)
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        msa.logit_scale.fill_(math.log(100.0))
        at_clamp = msa(x)
        msa.logit_scale.fill_(math.log(1e4))
        above = msa(x)
    assert MAX_LOGIT_SCALE == pytest.approx(math.log(100.0))
    assert torch.allclose(at_clamp, above)


def test_coordinate_table_closed_form_and_pretrained_window():
    """``sign(d) log2(1 + 8 |d| / (p - 1)) / 3`` per axis, in float64, for p = w (torchvision) and p != w."""
    for w, p in [(8, 8), (12, 8), (7, 12), (2, 2)]:
        d = np.arange(-(w - 1), w, dtype=np.float64)
        axis = np.sign(d) * np.log2(1 + 8 * np.abs(d) / (p - 1)) / 3
        expected = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1)[None]
        table = log_spaced_coords(w, p)
        assert table.shape == (1, 2 * w - 1, 2 * w - 1, 2)
        assert np.allclose(table.numpy(), expected, atol=1e-6)
        assert coords_table_windows(table) == (w, pytest.approx(p, abs=1e-3))
    tv = ShiftedWindowAttentionV2(16, [8, 8], [0, 0], 2)
    assert torch.equal(log_spaced_coords(8), tv.relative_coords_table)  # the default is torchvision's table
    with pytest.raises(ValueError, match=">= 2"):
        log_spaced_coords(1)


def test_pretrained_window_size_reaches_every_block_and_warns_on_mismatch(tv_t, caplog):
    cfg = ModelConfig(variant="swinv2_t", window_size=12, pretrained_window_size=8)
    ours = SwinTransformerV2.from_config(cfg)
    tables = [m.relative_coords_table for m in ours.modules() if isinstance(m, WindowMSAV2)]
    assert len(tables) == 12 and all(torch.equal(t, log_spaced_coords(12, 8)) for t in tables)
    with caplog.at_level(logging.WARNING):
        load_imagenet_backbone(ours, tv_t.state_dict())  # trained at window 8: as intended, no warning
    assert "pretrained window" not in caplog.text
    plain = SwinTransformerV2.from_config(ModelConfig(variant="swinv2_t", window_size=12))
    with caplog.at_level(logging.WARNING):
        load_imagenet_backbone(plain, tv_t.state_dict())
    assert "model.pretrained_window_size=8" in caplog.text
    with torch.no_grad():  # a window of 12 runs at any size with the window-8 weights
        outs = ours(torch.randn(1, 3, 96, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(24, 16), (12, 8), (6, 4), (3, 2)]


def test_version_mismatch_is_a_clear_error(tv_t):
    v1 = SwinTransformer(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="Swin V2 weights but the backbone is Swin V1"):
        load_imagenet_backbone(v1, tv_t.state_dict())
    v2 = tiny_v2()
    with pytest.raises(ValueError, match="Swin V1 weights but the backbone is Swin V2"):
        load_imagenet_backbone(v2, v1.state_dict())


def test_drop_path_rates_equal_torchvision_stochastic_depth():
    spec = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4))
    tv = TVSwin(
        [4, 4], spec["embed_dims"], list(spec["depths"]), list(spec["num_heads"]), [8, 8],
        stochastic_depth_prob=0.3, block=SwinTransformerBlockV2, downsample_layer=TVPatchMergingV2,
    )
    ours = SwinTransformerV2(**spec, drop_path_rate=0.3)
    tv_rates = [m.stochastic_depth.p for m in tv.modules() if hasattr(m, "stochastic_depth")]
    our_rates = [b.drop_path.drop_prob for s in ours.stages for b in s.blocks]
    assert our_rates == pytest.approx(tv_rates, abs=1e-7)
    assert our_rates[0] == 0 and our_rates[-1] == pytest.approx(0.3)


def tiny_v2(**kw) -> SwinTransformerV2:
    return SwinTransformerV2(embed_dims=16, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4, **kw)


def test_frozen_stages_freeze_embedding_stages_and_norms():
    m = tiny_v2(frozen_stages=2).train()
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in m.named_parameters() if n.startswith(("patch_embed.", "stages.0.", "stages.1.", "norm0.", "norm1."))
    }
    assert not m.stages[1].training and m.stages[2].training and not m.norm1.training
    assert all(p.requires_grad for p in tiny_v2(frozen_stages=-1).parameters())


def test_with_cp_gives_the_same_loss_and_gradients():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 64)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(5)
        m = tiny_v2(with_cp=with_cp, drop_path_rate=0.3).train()
        torch.manual_seed(6)  # the same DropPath draws in both runs (checkpointing restores the RNG)
        loss = sum(o.square().mean() for o in m(x))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(g0, g1, atol=1e-6)


def test_key_bias_gets_no_gradient():
    m = WindowMSAV2(8, 2, 2)
    m(torch.randn(3, 4, 8)).sum().backward()
    g = m.qkv.bias.grad
    assert torch.equal(g[8:16], torch.zeros(8)) and g[:8].abs().sum() > 0 and g[16:].abs().sum() > 0


def test_config_variants_build_the_v2_backbone():
    cfg = ModelConfig(variant="swinv2_t")
    assert cfg.window_size == 8 and cfg.resolved_backbone_version() == 2 and cfg.stage_channels() == [96, 192, 384, 768]
    assert ModelConfig(variant="swinv2_b").resolved_embed_dims() == 128
    assert ModelConfig(variant="swin_t").window_size == 7
    model = SwinMaskRCNN(tiny_model_config(backbone_version=2, window_size=4))
    assert isinstance(model.backbone, SwinTransformerV2) and model.backbone.stages[0].blocks[0].attn.window_size == 4
    assert isinstance(SwinMaskRCNN(tiny_model_config()).backbone, SwinTransformer)
    for bad, msg in [
        (dict(variant="swin_t", backbone_version=2), "use 'swinv2_t'"),
        (dict(variant="swinv2_t", backbone_version=1), "contradicts"),
        (dict(variant="swin_t", pretrained_window_size=8), "V2 backbones only"),
        (dict(variant="swinv2_t", window_size=1), "window_size >= 2"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ModelConfig(**bad)
