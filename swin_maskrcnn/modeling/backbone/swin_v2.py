"""Swin Transformer V2 backbone (Liu et al., CVPR 2022) computing what torchvision's ``swin_v2_t/s/b`` compute.

The function is torchvision's ``SwinTransformer`` built with ``SwinTransformerBlockV2`` and
``PatchMergingV2``, taken apart into four stage outputs for detection:

* scaled cosine attention: ``cos(q, k) * exp(min(logit_scale, log 100))`` with a learned scale per
  head (initialised at log 10);
* a continuous relative position bias: a 2-layer MLP (2 -> 512 -> heads, ReLU) over the log-spaced
  coordinate table ``sign(d) * log2(1 + 8 |d| / (pretrained_window_size - 1)) / 3``, then
  ``16 * sigmoid``; ``pretrained_window_size`` (default: the window size, torchvision's table) lets
  weights trained at one window run at another, as the paper does;
* residual post-norm: ``x + DropPath(LN(attn(x)))`` then ``x + DropPath(LN(MLP(x)))``;
* V2 patch merging: 2 x 2 neighbours in the original ``cat[x0, x1, x2, x3]`` order (TL, BL, TR,
  BR), reduction 4C -> 2C, then LayerNorm(2C) (no permutation on load: no mmdet layout exists);
* the key third of the qkv bias is held at zero in every forward (torchvision and the original V2,
  which has only ``q_bias`` / ``v_bias``);
* bottom/right zero padding to a window multiple inside each attention (not masked), and no shift
  along an axis whose padded size is one window (a stage not larger than the window).

Key names follow our V1 backbone (``patch_embed.projection``, ``stages.{s}.blocks.{b}.attn.w_msa.*``,
``ffn.layers.0.0`` / ``ffn.layers.1``, ``stages.{s}.downsample.{reduction,norm}``, ``norm0..norm3``),
so freezing, the optimiser's no-decay keys and checkpoint inference treat both versions alike;
``checkpoint.imagenet`` renames torchvision's and the original release's files to these names.
Each stage output passes through its own LayerNorm ``norm{i}`` (not in ImageNet files) into the FPN.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from .swin import FFN, DropPath, SwinTransformer, relative_position_index, window_plan

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..config import ModelConfig

#: upper clamp of the learned log logit scale (torchvision and the original: log(1 / 0.01))
MAX_LOGIT_SCALE = math.log(100.0)
#: the bias MLP's hidden width and the bias bound ``16 * sigmoid`` (both fixed by the paper's code)
CPB_HIDDEN = 512
CPB_BOUND = 16.0


def log_spaced_coords(window_size: int, pretrained_window_size: Optional[int] = None) -> Tensor:
    """The ``[1, 2w-1, 2w-1, 2]`` table of log-spaced relative coordinates the bias MLP reads.

    Offsets ``d`` in ``-(w-1)..(w-1)`` per axis are scaled to ``[-8, 8]`` by the pretrained window
    (``8 d / (p - 1)``), then ``sign * log2(1 + |.|) / 3``. ``p`` defaults to ``w``; with a larger
    ``w`` than ``p`` the table extends past 8, which is how V2 transfers across window sizes.
    """
    w = window_size
    p = window_size if pretrained_window_size is None else pretrained_window_size
    if w < 2 or p < 2:
        raise ValueError(f"Swin V2 needs window sizes >= 2, got window {w}, pretrained window {p}")
    d = torch.arange(-(w - 1), w, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).unsqueeze(0)
    table = table / (p - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0


def coords_table_windows(table: Tensor) -> tuple[int, float]:
    """(window, pretrained window) a V2 ``relative_coords_table`` ``[1, 2w-1, 2w-1, 2]`` was built for.

    Its largest entry is ``log2(1 + 8 (w - 1) / (p - 1)) / 3``, which gives ``p`` back.
    """
    w = (table.shape[1] + 1) // 2
    top = float(table[0, -1, -1, 0])
    return w, 1 + 8 * (w - 1) / (2 ** (3 * top) - 1)


class WindowMSAV2(nn.Module):
    """Scaled cosine attention inside each window, with the continuous (MLP) position bias.

    ``use_sdpa`` selects ``F.scaled_dot_product_attention`` (the per-head scale folded into the
    normalised queries, ``scale=1``) or the explicit ``softmax(cos(q, k) * s + bias + mask) v``;
    both compute the same function. As in V1, CPU training (autograd on) takes the explicit form:
    the fused CPU kernel has no gradient for a learned additive bias.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        pretrained_window_size: Optional[int] = None,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.use_sdpa = use_sdpa
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, CPB_HIDDEN, bias=True), nn.ReLU(inplace=True), nn.Linear(CPB_HIDDEN, num_heads, bias=False)
        )
        self.register_buffer("relative_coords_table", log_spaced_coords(window_size, pretrained_window_size))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=True)
        # 1 for the query and value thirds of the bias, 0 for the key third (never in a state_dict)
        keep = torch.ones(3 * embed_dims)
        keep[embed_dims : 2 * embed_dims] = 0
        self.register_buffer("qkv_bias_keep", keep, persistent=False)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def relative_position_bias(self) -> Tensor:
        """The bias ``[nH, w*w, w*w]``: ``16 * sigmoid(MLP(table))`` gathered per (query, key) pair."""
        n = self.window_size**2
        table = CPB_BOUND * torch.sigmoid(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads))
        return table[self.relative_position_index.view(-1)].view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: ``[B * nW, N, C]`` windows (batch-major); ``mask``: additive ``[nW, N, N]`` or None."""
        BW, N, C = x.shape
        nH = self.num_heads
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.qkv_bias_keep)
        q, k, v = qkv.reshape(BW, N, 3, nH, C // nH).permute(2, 0, 3, 1, 4).unbind(0)  # [B * nW, nH, N, hd]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()  # nH, 1, 1
        attn_bias = self.relative_position_bias().unsqueeze(0)  # 1, nH, N, N
        if mask is not None:
            nW = mask.shape[0]
            attn_bias = attn_bias + mask.unsqueeze(1)  # nW, nH, N, N
            if BW != nW:  # windows are batch-major: repeat the per-window bias for each image
                attn_bias = attn_bias.repeat(BW // nW, 1, 1, 1)
        attn_bias = attn_bias.to(q.dtype)
        if self.use_sdpa and not (torch.is_grad_enabled() and x.device.type == "cpu"):
            out = F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, attn_mask=attn_bias, scale=1.0)
        else:
            attn = (q @ k.transpose(-2, -1)) * scale.to(q.dtype) + attn_bias
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(BW, N, C))


class ShiftWindowMSAV2(nn.Module):
    """(Shifted-)window V2 attention over a token map: pad to the window, roll, attend, undo.

    The shift is dropped per axis where the padded map is a single window (torchvision's rule; the
    shift would only roll the padding), so any input size works at the configured window.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        pretrained_window_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        assert 0 <= shift_size < window_size
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSAV2(embed_dims, num_heads, window_size, pretrained_window_size)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        B, L, C = x.shape
        H, W = hw_shape
        assert L == H * W, "token count does not match hw_shape"
        w = self.window_size
        shift = (self.shift_size if H > w else 0, self.shift_size if W > w else 0)
        plan = window_plan(H, W, w, shift, x.device)
        if plan.padded:  # one zero token that the padding positions of the plan point at
            x = torch.cat([x, x.new_zeros(B, 1, C)], dim=1)
        windows = x.index_select(1, plan.gather).view(-1, w * w, C)
        windows = self.w_msa(windows, mask=plan.mask)
        return windows.view(B, -1, C).index_select(1, plan.scatter)


class SwinBlockV2(nn.Module):
    """Residual post-norm block: ``x + DropPath(LN(SW-MSA(x)))`` then ``x + DropPath(LN(FFN(x)))``."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        window_size: int,
        shift: bool,
        drop_path_rate: float,
        pretrained_window_size: Optional[int] = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.attn = ShiftWindowMSAV2(
            embed_dims, num_heads, window_size, window_size // 2 if shift else 0, pretrained_window_size
        )
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, hidden_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop_path = DropPath(drop_path_rate)

    def _forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x, hw_shape)))
        return x + self.drop_path(self.norm2(self.ffn(x)))

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            # Recompute activations in backward; the RNG state is restored so DropPath draws match.
            return cp.checkpoint(self._forward, x, hw_shape, use_reentrant=False)
        return self._forward(x, hw_shape)


class PatchMergingV2(nn.Module):
    """2x downsampling: corner pad to even size, 2x2 neighbours as ``cat[x0, x1, x2, x3]``, Linear, LN.

    ``x0..x3`` are the top-left, bottom-left, top-right and bottom-right tokens (index
    ``(dw * 2 + dh) * C + c``), the order of torchvision and the original V2; the norm comes after
    the reduction and has 2C channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        B, L, C = x.shape
        H, W = hw_shape
        assert L == H * W, "token count does not match hw_shape"
        x = x.view(B, H, W, C)
        pad_h, pad_w = H % 2, W % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        h2, w2 = (H + pad_h) // 2, (W + pad_w) // 2
        # [B, h2, dh, w2, dw, C] -> [B, h2, w2, dw, dh, C]: position-major, dh fastest (x0, x1, x2, x3)
        x = x.view(B, h2, 2, w2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, h2 * w2, 4 * C)
        return self.norm(self.reduction(x)), (h2, w2)


class SwinStageV2(nn.Module):
    """One resolution level of V2 blocks (alternating W-MSA / SW-MSA), then optional V2 merging.

    Returns the pre-downsample output and the downsampled input of the next stage.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        depth: int,
        window_size: int,
        drop_path_rates: Sequence[float],
        downsample: PatchMergingV2 | None,
        pretrained_window_size: Optional[int] = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        assert len(drop_path_rates) == depth
        self.blocks = nn.ModuleList(
            SwinBlockV2(
                embed_dims, num_heads, hidden_dims, window_size, i % 2 == 1, drop_path_rates[i],
                pretrained_window_size, with_cp,
            )
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(
        self, x: Tensor, hw_shape: tuple[int, int]
    ) -> tuple[Tensor, tuple[int, int], Tensor, tuple[int, int]]:
        """Returns ``(stage_out, stage_hw, next_in, next_hw)``."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, down_hw = self.downsample(x, hw_shape)
        return x, hw_shape, x_down, down_hw


class SwinTransformerV2(SwinTransformer):
    """Swin V2 backbone returning 4 NCHW maps (strides 4, 8, 16, 32), each through its own LayerNorm.

    V1's backbone with V2's stages and patch merging (the stem, stochastic depth, output norms,
    ``frozen_stages`` rule and forward are V1's): >= 0 freezes the patch embedding, and each ``i`` in
    ``1..frozen_stages`` freezes ``stages[i-1]`` (with its downsample) and ``norm{i-1}``.
    """

    stage_cls = SwinStageV2
    merging_cls = PatchMergingV2

    def __init__(
        self,
        embed_dims: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        pretrained_window_size: Optional[int] = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        frozen_stages: int = -1,
        with_cp: bool = False,
        patch_size: int = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__(
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            frozen_stages=frozen_stages,
            with_cp=with_cp,
            patch_size=patch_size,
            in_channels=in_channels,
            pretrained_window_size=pretrained_window_size,
        )

    @classmethod
    def _config_options(cls, cfg: "ModelConfig") -> dict:
        return {"pretrained_window_size": cfg.pretrained_window_size}

    def init_weights(self) -> None:
        """torchvision's (and the original V2's) from-scratch init: every Linear (the bias MLP's too)
        trunc_normal(0.02) / bias 0, LayerNorm 1 / 0, logit scale log(10); the patch conv keeps
        PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSAV2):
                nn.init.constant_(m.logit_scale, math.log(10.0))
