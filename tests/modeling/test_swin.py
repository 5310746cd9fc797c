"""Tests of the Swin backbone against independent references (torchvision, closed forms, hand cases)."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import swin_maskrcnn.modeling.backbone.swin as swin_module
from swin_maskrcnn.modeling.config import ModelConfig, tiny_model_config
from swin_maskrcnn.modeling.backbone.swin import (
    DropPath,
    PatchMerging,
    ShiftWindowMSA,
    SwinTransformer,
    WindowMSA,
    relative_position_index,
    shift_window_mask,
)

torchvision = pytest.importorskip("torchvision")
from torchvision.models.swin_transformer import SwinTransformer as TVSwinTransformer  # noqa: E402

SWIN_T_TENSORS = 189
SWIN_T_PARAMS = 27_520_698
# Swin-S: full model 69,112,506 minus the non-backbone part of Swin-T (47,794,602 - 27,520,698).
SWIN_S_PARAMS = 69_112_506 - (47_794_602 - SWIN_T_PARAMS)  # 48,838,602
SWIN_S_TENSORS = 399 - (231 - SWIN_T_TENSORS)  # 357: same non-backbone tensor count as Swin-T

REFERENCE_DOC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "mmdet_swin_mask_rcnn.md"


def tiny(**kw) -> SwinTransformer:
    """A narrow backbone for fast tests."""
    args = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)
    args.update(kw)
    return SwinTransformer(**args)


# --------------------------------------------------------------------------------------------------
# torchvision (original-Swin layout) -> mmdet layout. Documents the conversion of original weights.
# --------------------------------------------------------------------------------------------------


def unfold_order_source_index(channels: int) -> Tensor:
    """``src`` such that ``mmdet_vec[j] = original_vec[src[j]]`` for a patch-merging 4C vector.

    Original Swin / torchvision concatenate [x0, x1, x2, x3] with (dh, dw) = (0,0), (1,0), (0,1),
    (1,1), i.e. index ``k * C + c``; mmdet's nn.Unfold order is ``c * 4 + dh * 2 + dw``.
    """
    position_of = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3}
    src = torch.empty(4 * channels, dtype=torch.long)
    for c in range(channels):
        for dh in range(2):
            for dw in range(2):
                src[c * 4 + dh * 2 + dw] = position_of[(dh, dw)] * channels + c
    return src


def torchvision_to_mmdet(tv_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a torchvision ``SwinTransformer`` state_dict to mmdet backbone keys (no norm0..3).

    ``features.0`` is the patch embedding (conv, permute, LN); ``features.{2s+1}`` are the blocks of
    stage s; ``features.{2s+2}`` is the patch merging after stage s; ``norm`` / ``head`` are dropped.
    """
    out: dict[str, Tensor] = {}
    for key, value in tv_state.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue  # final norm and classification head
        idx = int(parts[1])
        if idx == 0:
            name = {"0": "patch_embed.projection", "2": "patch_embed.norm"}[parts[2]]
            out[f"{name}.{parts[3]}"] = value
        elif idx % 2 == 1:
            stage, block, rest = (idx - 1) // 2, parts[2], ".".join(parts[3:])
            if rest == "attn.relative_position_index":
                continue  # a buffer we build ourselves (checked separately)
            rest = re.sub(r"^attn\.", "attn.w_msa.", rest)
            rest = re.sub(r"^mlp\.0\.", "ffn.layers.0.0.", rest)
            rest = re.sub(r"^mlp\.3\.", "ffn.layers.1.", rest)
            out[f"stages.{stage}.blocks.{block}.{rest}"] = value
        else:
            stage = idx // 2 - 1
            channels = value.shape[-1] // 4
            src = unfold_order_source_index(channels)
            permuted = value[..., src]  # norm.{weight,bias} [4C] or reduction.weight [2C, 4C] columns
            out[f"stages.{stage}.downsample.{parts[2]}.{parts[3]}"] = permuted.clone()
    return out


def randomize_(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial values everywhere (LN affine, biases, bias tables) so a wrong mapping shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 2:  # Linear weights: std 0.1 makes attention logits O(1)
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def torchvision_stage_outputs(tv: TVSwinTransformer, ours: SwinTransformer, x: Tensor) -> list[Tensor]:
    """torchvision per-stage features (before merging) through our norm{i}, as NCHW."""
    outs = []
    h = x
    for idx, layer in enumerate(tv.features):
        h = layer(h)
        if idx % 2 == 1:  # output of a block stage, NHWC
            norm = getattr(ours, f"norm{idx // 2}")
            outs.append(F.layer_norm(h, h.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2))
    return outs


def compare_with_torchvision(tv: TVSwinTransformer, ours: SwinTransformer, x: Tensor, atol: float) -> None:
    g = torch.Generator().manual_seed(0)
    randomize_(tv, g)
    randomize_(ours, g)  # gives norm0..3 random affine params too
    tv_state = tv.state_dict()
    for key, index in tv_state.items():  # torchvision stores the same index, flattened
        if key.endswith("relative_position_index"):
            assert torch.equal(index, relative_position_index(7).view(-1))
    missing, unexpected = ours.load_state_dict(torchvision_to_mmdet(tv_state), strict=False)
    assert unexpected == []
    assert sorted(set(k.rsplit(".", 1)[0] for k in missing if "relative_position_index" not in k)) == [
        f"norm{i}" for i in range(4)
    ]
    tv.eval()
    ours.eval()
    with torch.no_grad():
        expected = torchvision_stage_outputs(tv, ours, x)
        got = ours(x)
    assert len(got) == 4
    for e, o in zip(expected, got):
        assert o.shape == e.shape
        assert (o - e).abs().max().item() <= atol


def test_swin_t_matches_torchvision_448() -> None:
    """Full Swin-T at 448 (every stage a multiple of 7 and larger than the window: shifts active)."""
    torch.manual_seed(0)
    tv = torchvision.models.swin_t(weights=None)
    ours = SwinTransformer()
    x = torch.randn(1, 3, 448, 448)
    compare_with_torchvision(tv, ours, x, atol=1e-4)


def test_padded_sizes_match_torchvision() -> None:
    """Narrow model at 300x260: every stage pads to the window (and merging pads odd sizes), with
    the padded maps still larger than the window so torchvision keeps the shift too."""
    torch.manual_seed(0)
    tv = TVSwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[7, 7]
    )
    ours = tiny(depths=(2, 2, 2, 2))
    x = torch.randn(1, 3, 300, 260)
    compare_with_torchvision(tv, ours, x, atol=1e-4)
    assert [o.shape[-2:] for o in ours(x)] == [(75, 65), (38, 33), (19, 17), (10, 9)]


# --------------------------------------------------------------------------------------------------
# Patch merging order
# --------------------------------------------------------------------------------------------------


def merging_without_affine(in_channels: int) -> PatchMerging:
    """PatchMerging whose LN is removed and whose reduction is the identity: exposes the 4C vector."""
    pm = PatchMerging(in_channels, 4 * in_channels)
    pm.norm = nn.Identity()
    with torch.no_grad():
        pm.reduction.weight.copy_(torch.eye(4 * in_channels))
    return pm


def test_patch_merging_hand_case() -> None:
    # C=2 on a 2x2 map, value = 100*c + 10*h + w; output channel c*4 + dh*2 + dw holds x[c, dh, dw].
    grid = torch.tensor([[100 * c + 10 * h + w for c in range(2)] for h in range(2) for w in range(2)])
    tokens = grid.float().unsqueeze(0)  # [1, 4, 2], token order row-major
    out, hw = merging_without_affine(2)(tokens, (2, 2))
    assert hw == (1, 1)
    assert out[0, 0].tolist() == [0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0]


def test_patch_merging_random_odd_size_matches_explicit_gather() -> None:
    torch.manual_seed(0)
    B, C, H, W = 2, 3, 5, 7
    x = torch.randn(B, H * W, C)
    pm = PatchMerging(C, 2 * C)
    with torch.no_grad():
        pm.norm.weight.normal_()
        pm.norm.bias.normal_()
    out, hw = pm(x, (H, W))
    assert hw == (3, 4)

    padded = torch.zeros(B, C, 6, 8)
    padded[:, :, :H, :W] = x.view(B, H, W, C).permute(0, 3, 1, 2)  # corner (bottom/right) padding
    gathered = torch.zeros(B, 3 * 4, 4 * C)
    for i in range(3):
        for j in range(4):
            for c in range(C):
                for dh in range(2):
                    for dw in range(2):
                        gathered[:, i * 4 + j, c * 4 + dh * 2 + dw] = padded[:, c, 2 * i + dh, 2 * j + dw]
    expected = F.linear(F.layer_norm(gathered, (4 * C,), pm.norm.weight, pm.norm.bias), pm.reduction.weight)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)

    # The same vector in nn.Unfold order, and the original-Swin order maps onto it by the converter.
    unfolded = nn.Unfold(2, stride=2)(padded).transpose(1, 2)
    torch.testing.assert_close(unfolded, gathered)
    p = padded.permute(0, 2, 3, 1)
    original = torch.cat([p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(original.reshape(B, 12, 4 * C)[..., unfold_order_source_index(C)], gathered)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


def explicit_window_attention(m: WindowMSA, x: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T * scale + bias + mask) v, written out from the module's weights."""
    BW, N, C = x.shape
    nH, hd = m.num_heads, C // m.num_heads
    qkv = x @ m.qkv.weight.T + m.qkv.bias
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    heads = [slice(h * hd, (h + 1) * hd) for h in range(nH)]
    w = m.window_size
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    table_index = (ys[:, None] - ys[None, :] + w - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    outs = []
    for h, sl in enumerate(heads):
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) * hd**-0.5
        logits = logits + m.relative_position_bias_table[table_index, h]
        if mask is not None:
            logits = logits + mask.repeat(BW // mask.shape[0], 1, 1)  # windows are batch-major
        outs.append(torch.softmax(logits, dim=-1) @ v[..., sl])
    return torch.cat(outs, dim=-1) @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_equals_explicit_softmax(with_mask: bool) -> None:
    torch.manual_seed(0)
    m = WindowMSA(embed_dims=12, num_heads=3, window_size=3)
    with torch.no_grad():
        m.relative_position_bias_table.normal_()
        m.qkv.weight.normal_(std=0.3)
        m.qkv.bias.normal_(std=0.1)
    B, nW = 2, 4
    x = torch.randn(B * nW, 9, 12)
    mask = shift_window_mask(6, 6, 3, 1) if with_mask else None
    expected = explicit_window_attention(m, x, mask)
    with torch.no_grad():
        m.use_sdpa = True
        sdpa = m(x, mask)
        m.use_sdpa = False
        plain = m(x, mask)
    assert (sdpa - expected).abs().max().item() <= 1e-5
    assert (plain - expected).abs().max().item() <= 1e-5


def test_shift_mask_hand_case() -> None:
    # 4x4 padded map, window 2, shift 1. Region slices per axis: [0:-2]=0..1, [-2:-1]=2, [-1:]=3, so
    # region labels (3*row_region + col_region) are
    #   rows 0,1: 0 0 1 2 ; row 2: 3 3 4 5 ; row 3: 6 6 7 8
    window_labels = [[0, 0, 0, 0], [1, 2, 1, 2], [3, 3, 6, 6], [4, 5, 7, 8]]
    mask = shift_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    for win, labels in enumerate(window_labels):
        lab = torch.tensor(labels)
        expected = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
        assert torch.equal(mask[win], expected)


def test_shift_mask_values_and_interior_windows() -> None:
    mask = shift_window_mask(21, 28, 7, 3)
    assert mask.shape == (12, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    # Only the last window row / column mixes wrapped-around regions.
    grid = mask.view(3, 4, 49, 49)
    assert (grid[:2, :3] == 0).all()
    assert (grid[2] != 0).any(dim=(1, 2)).all() and (grid[:, 3] != 0).any(dim=(1, 2)).all()


def test_relative_position_index_original_formula() -> None:
    for w in (7, 3):
        ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
        rel = coords[:, :, None] - coords[:, None, :]
        expected = (rel[0] + w - 1) * (2 * w - 1) + (rel[1] + w - 1)
        got = relative_position_index(w)
        assert got.dtype == torch.int64 and torch.equal(got, expected)
    m = WindowMSA(8, 2, 7)
    assert "relative_position_index" in m.state_dict()
    assert torch.equal(m.relative_position_index, relative_position_index(7))


def test_padding_is_not_masked_in_window_attention() -> None:
    """mmdet attends to padded (zero) tokens: a 5x5 map in a 7-window equals the 7x7 zero-padded map."""
    torch.manual_seed(0)
    attn = ShiftWindowMSA(8, 2, 7, 0)
    x = torch.randn(1, 25, 8)
    padded = torch.zeros(1, 7, 7, 8)
    padded[:, :5, :5] = x.view(1, 5, 5, 8)
    with torch.no_grad():
        full = attn(padded.view(1, 49, 8), (7, 7)).view(1, 7, 7, 8)[:, :5, :5]
        got = attn(x, (5, 5)).view(1, 5, 5, 8)
    torch.testing.assert_close(got, full)


def test_shift_kept_when_map_smaller_than_window() -> None:
    """Unlike torchvision, mmdet shifts even when the padded map is a single window (a 3x3 map here),
    so SW-MSA differs from W-MSA with the same weights."""
    torch.manual_seed(0)
    shifted = ShiftWindowMSA(8, 2, 7, 3)
    plain = ShiftWindowMSA(8, 2, 7, 0)
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(1, 9, 8)
    with torch.no_grad():
        assert not torch.allclose(shifted(x, (3, 3)), plain(x, (3, 3)), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# DropPath
# --------------------------------------------------------------------------------------------------


def test_drop_path_statistics() -> None:
    torch.manual_seed(0)
    p, n = 0.3, 40_000
    dp = DropPath(p).train()
    x = torch.full((n, 2, 3), 2.0)
    out = dp(x)
    per_sample = out.view(n, -1)
    # Whole samples are kept (scaled by 1/keep) or zeroed: the draw is uniform, floor(keep + U).
    assert torch.all((per_sample == per_sample[:, :1]))
    values = per_sample[:, 0].unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(2.0 / (1 - p))
    kept = (per_sample[:, 0] != 0).float().mean().item()
    sigma = ((1 - p) * p / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma
    assert abs(out.mean().item() - 2.0) < 5 * 2.0 * sigma / (1 - p)


def test_drop_path_identity_in_eval_or_zero_rate() -> None:
    x = torch.randn(8, 4)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x


def test_drop_path_rates_rise_linearly_over_all_blocks() -> None:
    m = tiny(depths=(1, 2, 1, 2), drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for st in m.stages for blk in st.blocks]
    assert rates == pytest.approx([0.3 * i / 5 for i in range(6)])
    shifts = [blk.attn.shift_size for st in m.stages for blk in st.blocks]
    assert shifts == [0, 0, 3, 0, 0, 3]  # even blocks W-MSA, odd blocks SW-MSA with window // 2


# --------------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------------


def expected_frozen_prefixes(k: int) -> tuple[str, ...]:
    prefixes = ["patch_embed."] if k >= 0 else []
    for i in range(1, k + 1):
        prefixes += [f"stages.{i - 1}.", f"norm{i - 1}."]
    return tuple(prefixes)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_requires_grad_and_eval_mode(k: int) -> None:
    m = tiny(frozen_stages=k, drop_path_rate=0.2)
    prefixes = expected_frozen_prefixes(k)
    for name, p in m.named_parameters():
        assert p.requires_grad == (not name.startswith(prefixes)), name
    if k >= 1:  # a frozen stage includes its downsample
        assert not any(p.requires_grad for p in m.stages[0].downsample.parameters())
    for mode_switch in (lambda: m.train(), lambda: m.eval().train(True)):
        assert mode_switch() is m
        for name, mod in m.named_modules():
            if name:
                assert mod.training == (not (name + ".").startswith(prefixes)), name


def test_frozen_stage_deterministic_in_train_mode() -> None:
    torch.manual_seed(0)
    m = tiny(depths=(1, 1, 1, 1), drop_path_rate=0.9, frozen_stages=2).train()  # rates 0, .3, .6, .9
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # stage 1 has rate 0.3 but is frozen
    assert not torch.equal(a[2], b[2]) and not torch.equal(a[3], b[3])


# --------------------------------------------------------------------------------------------------
# Shapes, checkpointing, keys
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(67, 93), (33, 31), (64, 224)])
def test_any_input_size(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = tiny().eval()
    H, W = hw
    with torch.no_grad():
        outs = m(torch.randn(1, 3, H, W))
    for i, o in enumerate(outs):
        s = 4 * 2**i
        assert o.shape == (1, m.out_channels[i], -(-H // s), -(-W // s))
        assert torch.isfinite(o).all()


def test_with_cp_same_outputs_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    plain = tiny(depths=(2, 1, 1, 1), drop_path_rate=0.3).train()
    ckpt = copy.deepcopy(plain)
    for blk in ckpt.modules():
        if hasattr(blk, "with_cp"):
            blk.with_cp = True
    calls = []
    real = swin_module.cp.checkpoint
    monkeypatch.setattr(swin_module.cp, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(3)
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == 5  # one per block
    for o1, o2 in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(o1, o2, atol=1e-6, rtol=1e-5)
    for name, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][name], atol=1e-6, rtol=1e-5)


def expected_backbone_shapes(depths: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """mmdet key pattern table (reference section 2) for embed 96, heads 3/6/12/24, window 7."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.projection.weight": (96, 3, 4, 4),
        "patch_embed.projection.bias": (96,),
        "patch_embed.norm.weight": (96,),
        "patch_embed.norm.bias": (96,),
    }
    for s, depth in enumerate(depths):
        C, nH = 96 * 2**s, 3 * 2**s
        for b in range(depth):
            p = f"stages.{s}.blocks.{b}."
            shapes.update({
                p + "norm1.weight": (C,), p + "norm1.bias": (C,),
                p + "attn.w_msa.relative_position_bias_table": (169, nH),
                p + "attn.w_msa.relative_position_index": (49, 49),
                p + "attn.w_msa.qkv.weight": (3 * C, C), p + "attn.w_msa.qkv.bias": (3 * C,),
                p + "attn.w_msa.proj.weight": (C, C), p + "attn.w_msa.proj.bias": (C,),
                p + "norm2.weight": (C,), p + "norm2.bias": (C,),
                p + "ffn.layers.0.0.weight": (4 * C, C), p + "ffn.layers.0.0.bias": (4 * C,),
                p + "ffn.layers.1.weight": (C, 4 * C), p + "ffn.layers.1.bias": (C,),
            })  # fmt: skip
        if s < len(depths) - 1:
            shapes[f"stages.{s}.downsample.norm.weight"] = (4 * C,)
            shapes[f"stages.{s}.downsample.norm.bias"] = (4 * C,)
            shapes[f"stages.{s}.downsample.reduction.weight"] = (2 * C, 4 * C)
        shapes[f"norm{s}.weight"] = (C,)
        shapes[f"norm{s}.bias"] = (C,)
    return shapes


@pytest.mark.parametrize(
    "variant,depths,tensors,params",
    [
        ("swin_t", (2, 2, 6, 2), SWIN_T_TENSORS, SWIN_T_PARAMS),
        ("swin_s", (2, 2, 18, 2), SWIN_S_TENSORS, SWIN_S_PARAMS),
    ],
)
def test_state_dict_layout_and_counts(variant: str, depths: tuple[int, ...], tensors: int, params: int) -> None:
    m = SwinTransformer.from_config(ModelConfig(variant=variant))
    sd = m.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_backbone_shapes(depths)
    assert len(sd) == tensors
    assert sum(p.numel() for p in m.parameters()) == params
    assert m.out_channels == [96, 192, 384, 768]
    buffers = [k for k, v in sd.items() if v.dtype != torch.float32]
    assert len(buffers) == sum(depths) and all(k.endswith("relative_position_index") for k in buffers)
    assert all(sd[k].dtype == torch.int64 for k in buffers)


@pytest.mark.skipif(not REFERENCE_DOC.exists(), reason="shared reference document not available")
def test_swin_t_keys_match_reference_appendix() -> None:
    text = REFERENCE_DOC.read_text()
    appendix = text.split("## Appendix A", 1)[1]
    expected = {
        m.group(1): tuple(int(d) for d in m.group(2).split(",") if d.strip())
        for m in re.finditer(r"^backbone\.(\S+) \(([\d, ]*)\)$", appendix, flags=re.M)
    }
    got = {k: tuple(v.shape) for k, v in SwinTransformer().state_dict().items()}
    assert got == expected


def test_from_config_passes_options() -> None:
    cfg = tiny_model_config(frozen_stages=1, with_cp=True, drop_path_rate=0.1, window_size=5)
    m = SwinTransformer.from_config(cfg)
    assert m.out_channels == cfg.stage_channels()
    assert m.frozen_stages == 1 and not any(p.requires_grad for p in m.stages[0].parameters())
    blocks = [blk for st in m.stages for blk in st.blocks]
    assert all(blk.with_cp for blk in blocks)
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert blocks[0].attn.w_msa.relative_position_bias_table.shape == (81, 1)


def test_init_weights_follow_mmdet() -> None:
    torch.manual_seed(0)
    m = SwinTransformer(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    w = torch.cat([lin.weight.flatten() for lin in linears])
    assert abs(w.std().item() - 0.02) < 0.003 and w.abs().max().item() <= 2.0  # trunc_normal(0.02)
    assert all(lin.bias is None or (lin.bias == 0).all() for lin in linears)
    for mod in m.modules():
        if isinstance(mod, nn.LayerNorm):
            assert (mod.weight == 1).all() and (mod.bias == 0).all()
    tables = torch.cat([mod.relative_position_bias_table.flatten() for mod in m.modules() if isinstance(mod, WindowMSA)])
    assert 0.015 < tables.std().item() < 0.025
