"""Swin Transformer backbone with mmdetection 3.x semantics and state_dict layout.

The module tree reproduces mmdet's ``SwinTransformer`` key names exactly (``patch_embed.projection``,
``stages.{s}.blocks.{b}.attn.w_msa.*``, ``ffn.layers.0.0`` / ``ffn.layers.1``,
``stages.{s}.downsample.{norm,reduction}``, ``norm0..norm3``), so an mmdet checkpoint's ``backbone.*``
tensors load without renaming. Numerics follow mmdet too:

* corner padding (bottom/right zeros) before the patch embedding, the window partition and the
  patch merging, so any input size works and outputs have ``ceil(H / stride)`` sizes;
* padded tokens are not masked in attention; only the shifted-window mask (-100) is added;
* patch merging uses ``nn.Unfold`` channel order (index ``c * 4 + dh * 2 + dw``), which differs
  from the original Swin / torchvision ``cat[x0, x1, x2, x3]`` order;
* mmcv's DropPath (uniform draw, per sample) with a linear rate over all blocks;
* one LayerNorm per output (``norm{i}``) applied to each stage's output before its downsample.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..config import ModelConfig

# Value mmdet (and the original Swin) adds to attention logits between tokens of different regions.
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> Tensor:
    """Index into the (2w-1)^2 bias table for every (query, key) pair of a w x w window, as mmdet.

    mmdet builds it as ``flip(seq + seq.T, dim=1)`` with ``seq[i*w + j] = i*(2w-1) + j``; the values
    equal the original Swin formula ``(dh + w - 1) * (2w - 1) + (dw + w - 1)``.
    """
    w = window_size
    seq = (torch.arange(w)[:, None] * (2 * w - 1) + torch.arange(w)[None, :]).reshape(1, -1)
    return (seq + seq.T).flip(1).contiguous()


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split ``[B, H, W, C]`` (H, W multiples of the window) into ``[B * nW, w * w, C]`` windows."""
    B, H, W, C = x.shape
    w = window_size
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def _shift_pair(shift_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(shift_h, shift_w)`` of a shift given for both axes or per axis."""
    if isinstance(shift_size, int):
        return shift_size, shift_size
    return int(shift_size[0]), int(shift_size[1])


def shift_window_mask(
    H_pad: int, W_pad: int, window_size: int, shift_size: int | tuple[int, int], device=None
) -> Tensor:
    """Additive mask ``[nW, w*w, w*w]`` for shifted windows: 0 within a region, -100 across regions.

    The padded, rolled map is cut into 3 x 3 regions (slices ``[0, -w)``, ``[-w, -s)``, ``[-s, end)``
    per axis, mmdet's layout on the padded size); tokens that wrapped around by the cyclic shift land
    in a different region than their window neighbours and must not attend to them. ``shift_size``
    may differ per axis ``(s_h, s_w)`` (Swin V2 drops the shift along an axis no larger than the
    window); an axis with shift 0 is one region.
    """
    w = window_size
    s_h, s_w = _shift_pair(shift_size)

    def region(n: int, s: int) -> Tensor:  # 0 on [0, n - w), 1 on [n - w, n - s), 2 on [n - s, n)
        i = torch.arange(n, device=device)
        if s == 0:
            return torch.zeros_like(i)
        return (i >= n - w).long() + (i >= n - s).long()

    label = region(H_pad, s_h)[:, None] * 3 + region(W_pad, s_w)[None, :]
    region_windows = window_partition(label[None, :, :, None], w).squeeze(-1)  # nW, w*w
    differ = region_windows.unsqueeze(1) != region_windows.unsqueeze(2)
    return torch.zeros(differ.shape, device=device).masked_fill(differ, SHIFT_MASK_VALUE)


class WindowPlan(NamedTuple):
    """Where each window token comes from, for one map size, window and shift (see :func:`window_plan`)."""

    gather: Tensor  # [nW * w * w] index into the flattened [H * W] map; H * W = a zero (padding) token
    scatter: Tensor  # [H * W] index into the flattened windows, for the way back
    mask: Optional[Tensor]  # additive shift mask [nW, w*w, w*w] (None without shift)
    num_windows: int
    padded: bool


def _build_window_plan(H: int, W: int, w: int, shift: tuple[int, int], device: torch.device) -> WindowPlan:
    s_h, s_w = shift
    H_pad, W_pad = H + (-H) % w, W + (-W) % w
    # torch.roll(x, -s) puts input row (r + s) % n at row r; rows/cols >= H/W are the zero padding.
    rows = (torch.arange(H_pad, device=device) + s_h) % H_pad
    cols = (torch.arange(W_pad, device=device) + s_w) % W_pad
    src = torch.where((rows[:, None] < H) & (cols[None, :] < W), rows[:, None] * W + cols[None, :], H * W)
    gather = window_partition(src[None, :, :, None], w).reshape(-1)
    scatter = torch.empty(H * W + 1, dtype=torch.long, device=device)
    scatter[gather] = torch.arange(gather.numel(), device=device)  # padding entries all land on H * W
    mask = shift_window_mask(H_pad, W_pad, w, shift, device=device) if s_h or s_w else None
    return WindowPlan(gather, scatter[: H * W], mask, (H_pad // w) * (W_pad // w), H_pad != H or W_pad != W)


_PLANS: dict[tuple, WindowPlan] = {}


def window_plan(
    H: int, W: int, window_size: int, shift_size: int | tuple[int, int], device: torch.device
) -> WindowPlan:
    """Index plan for pad + cyclic roll + window partition (and back) of an ``H x W`` map in ONE gather.

    ``shift_size`` is one shift for both axes (V1) or ``(s_h, s_w)``. The plan depends only on
    sizes, so it is built once per feature size and reused by every block and forward (cached here;
    rebuilt, uncached, while tracing or compiling so graphs stay free of Python-side state). A
    gather copies each token once, where pad, roll and partition copied it three times.
    """
    shift = _shift_pair(shift_size)
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _build_window_plan(H, W, window_size, shift, device)
    key = (H, W, window_size, shift, str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        plan = _PLANS[key] = _build_window_plan(H, W, window_size, shift, device)
    return plan


class DropPath(nn.Module):
    """mmcv's stochastic depth: drop a whole residual branch per sample, rescale the kept ones.

    The keep mask is ``floor(keep_prob + U[0, 1))`` (a Bernoulli(keep_prob) draw), so E[output] = x.
    Identity in eval mode or when the rate is 0.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor()
        return x.div(keep_prob) * keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: corner pad to a patch multiple, conv, flatten, LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``[B, C, H, W]`` -> tokens ``[B, ceil(H/p) * ceil(W/p), D]`` and their ``(h, w)``."""
        p = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x), hw


class WindowMSA(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    ``use_sdpa`` selects ``F.scaled_dot_product_attention`` (default) or the explicit
    ``softmax(q k^T * scale + bias + mask) v``; both compute the same function. On a CPU with
    autograd on, the explicit form is used anyway: the fused CPU kernel has no gradient for the
    (learned) bias, so SDPA would take its math path, which adds a fully-masked-row check per call
    and is ~10 % slower per block than the explicit ops (``docs/performance.md``).
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, use_sdpa: bool = True) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (embed_dims // num_heads) ** -0.5
        self.use_sdpa = use_sdpa
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=True)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def relative_position_bias(self) -> Tensor:
        """The bias ``[nH, w*w, w*w]`` gathered from the table."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: ``[B * nW, N, C]`` windows (batch-major); ``mask``: additive ``[nW, N, N]`` or None.

        Bias and shift mask form one additive tensor laid out ``[B * nW | 1, nH, N, N]`` so that q, k
        and v stay plain 4-D views and every block, shifted or not, reaches the fused CPU/GPU SDPA
        kernel (a 5-D view made the shifted blocks fall back to SDPA's explicit math path).
        """
        BW, N, C = x.shape
        nH = self.num_heads
        qkv = self.qkv(x).reshape(BW, N, 3, nH, C // nH).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B * nW, nH, N, hd]
        attn_bias = self.relative_position_bias().unsqueeze(0)  # 1, nH, N, N
        if mask is not None:
            nW = mask.shape[0]
            attn_bias = attn_bias + mask.unsqueeze(1)  # nW, nH, N, N
            if BW != nW:  # windows are batch-major: repeat the per-window bias for each image
                attn_bias = attn_bias.repeat(BW // nW, 1, 1, 1)
        attn_bias = attn_bias.to(q.dtype)
        if self.use_sdpa and not (torch.is_grad_enabled() and x.device.type == "cpu"):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + attn_bias
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(BW, N, C))


class ShiftWindowMSA(nn.Module):
    """(Shifted-)window attention over a token map: pad to a window multiple, roll, attend, undo.

    Padding is bottom/right zeros and is not masked (mmdet behaviour); the shift mask is built on the
    padded size. ``shift_size`` 0 is plain W-MSA.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int) -> None:
        super().__init__()
        assert 0 <= shift_size < window_size
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        B, L, C = x.shape
        H, W = hw_shape
        assert L == H * W, "token count does not match hw_shape"
        plan = window_plan(H, W, self.window_size, self.shift_size, x.device)
        if plan.padded:  # one zero token that the padding positions of the plan point at
            x = torch.cat([x, x.new_zeros(B, 1, C)], dim=1)
        windows = x.index_select(1, plan.gather).view(-1, self.window_size**2, C)
        windows = self.w_msa(windows, mask=plan.mask)
        return windows.view(B, -1, C).index_select(1, plan.scatter)


class FFN(nn.Module):
    """Two-layer MLP ``Linear(C, hidden) -> GELU -> Linear(hidden, C)``, laid out as mmcv's FFN.

    ``layers.0.0`` is fc1 and ``layers.1`` is fc2, the key names of mmdet checkpoints.
    """

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_dims), nn.GELU()),
            nn.Linear(hidden_dims, embed_dims),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(SW-MSA(LN(x)))`` then ``x + DropPath(FFN(LN(x)))``."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        window_size: int,
        shift: bool,
        drop_path_rate: float,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, hidden_dims)
        self.drop_path = DropPath(drop_path_rate)

    def _forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw_shape))
        return x + self.drop_path(self.ffn(self.norm2(x)))

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            # Recompute activations in backward; the RNG state is restored so DropPath draws match.
            return cp.checkpoint(self._forward, x, hw_shape, use_reentrant=False)
        return self._forward(x, hw_shape)


class PatchMerging(nn.Module):
    """2x downsampling: corner pad to even size, gather 2x2 neighbours in ``nn.Unfold`` order, LN, Linear.

    The 4C vector is in Unfold order (channel-major: index ``c * 4 + dh * 2 + dw``), as mmdet
    checkpoints expect.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        B, L, C = x.shape
        H, W = hw_shape
        assert L == H * W, "token count does not match hw_shape"
        x = x.view(B, H, W, C)
        pad_h, pad_w = H % 2, W % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        h2, w2 = (H + pad_h) // 2, (W + pad_w) // 2
        # Unfold's channel order c * 4 + dh * 2 + dw as one permuted copy (nn.Unfold's im2col, its
        # transpose and LayerNorm's contiguous copy were three).
        x = x.view(B, h2, 2, w2, 2, C).permute(0, 1, 3, 5, 2, 4).reshape(B, h2 * w2, 4 * C)
        return self.reduction(self.norm(x)), (h2, w2)


class SwinStage(nn.Module):
    """One resolution level: a sequence of alternating W-MSA / SW-MSA blocks, then optional merging.

    (mmdet's ``SwinBlockSequence``.) Returns the pre-downsample output and the downsampled input of
    the next stage.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        depth: int,
        window_size: int,
        drop_path_rates: Sequence[float],
        downsample: PatchMerging | None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        assert len(drop_path_rates) == depth
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, hidden_dims, window_size, i % 2 == 1, drop_path_rates[i], with_cp)
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


class SwinTransformer(nn.Module):
    """Swin Transformer backbone returning 4 NCHW maps (strides 4, 8, 16, 32), mmdet-compatible.

    ``frozen_stages`` follows mmdet: >= 0 freezes the patch embedding, and each ``i`` in
    ``1..frozen_stages`` freezes ``stages[i-1]`` (with its downsample) and ``norm{i-1}``; frozen parts
    get ``requires_grad=False`` and stay in eval mode across ``train()`` calls.
    """

    # the parts a subclass swaps (Swin V2: its stages and patch merging); the rest is shared
    stage_cls: type[nn.Module] = SwinStage
    merging_cls: type[nn.Module] = PatchMerging
    #: memory format of the 4 output maps: NCHW, or channels_last (set by ``acceleration.bf16_copy``:
    #: the NHWC tokens are channels_last already, so no copy, and oneDNN's bf16 convolutions of the
    #: FPN run in channels_last without reorders)
    out_memory_format: torch.memory_format = torch.contiguous_format

    def __init__(
        self,
        embed_dims: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        frozen_stages: int = -1,
        with_cp: bool = False,
        patch_size: int = 4,
        in_channels: int = 3,
        **stage_options: object,
    ) -> None:
        super().__init__()
        assert len(depths) == len(num_heads)
        assert -1 <= frozen_stages <= len(depths)
        self.frozen_stages = frozen_stages
        num_stages = len(depths)
        self.out_channels: list[int] = [embed_dims * 2**i for i in range(num_stages)]

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)

        # Stochastic depth rises linearly from 0 to drop_path_rate over all blocks.
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]
        self.stages = nn.ModuleList()
        for i, channels in enumerate(self.out_channels):
            downsample = self.merging_cls(channels, 2 * channels) if i < num_stages - 1 else None
            first = sum(depths[:i])
            self.stages.append(
                self.stage_cls(
                    embed_dims=channels,
                    num_heads=num_heads[i],
                    hidden_dims=int(mlp_ratio * channels),
                    depth=depths[i],
                    window_size=window_size,
                    drop_path_rates=rates[first : first + depths[i]],
                    downsample=downsample,
                    with_cp=with_cp,
                    **stage_options,
                )
            )
        for i, channels in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

        self.init_weights()
        self._freeze_stages()

    @classmethod
    def from_config(cls, cfg: "ModelConfig") -> "SwinTransformer":
        """Build the backbone described by a :class:`~swin_maskrcnn.modeling.config.ModelConfig`."""
        return cls(
            embed_dims=cfg.resolved_embed_dims(),
            depths=cfg.resolved_depths(),
            num_heads=cfg.resolved_num_heads(),
            window_size=cfg.window_size,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path_rate,
            frozen_stages=cfg.frozen_stages,
            with_cp=cfg.with_cp,
            **cls._config_options(cfg),
        )

    @classmethod
    def _config_options(cls, cfg: "ModelConfig") -> dict:
        """Constructor arguments a subclass reads from the config beyond V1's (none here)."""
        return {}

    def init_weights(self) -> None:
        """mmdet's from-scratch init: Linear trunc_normal(0.02) / bias 0, LayerNorm 1 / 0, bias tables
        trunc_normal(0.02); the patch conv keeps PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def _frozen_modules(self) -> list[nn.Module]:
        """Modules frozen by ``frozen_stages`` (mmdet's ``_freeze_stages`` selection)."""
        modules: list[nn.Module] = []
        if self.frozen_stages >= 0:
            modules.append(self.patch_embed)
        for i in range(1, self.frozen_stages + 1):
            modules += [self.stages[i - 1], getattr(self, f"norm{i - 1}")]
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "SwinTransformer":
        """Switch mode but keep frozen parts in eval (their DropPath stays inactive)."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> 4 maps ``[B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))]``, in the dtype
        of the weights (the fp32 image batch is cast to it: a no-op in fp32, bf16 for ``bf16_copy``)."""
        x, hw = self.patch_embed(x.to(self.patch_embed.projection.weight.dtype))
        outs: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            out, out_hw, x, hw = stage(x, hw)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, *out_hw, self.out_channels[i]).permute(0, 3, 1, 2).contiguous(
                memory_format=self.out_memory_format))
        return outs
