"""Parameter groups on a real (tiny) model and the lr schedule against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.detector import SwinMaskRCNN
from swin_maskrcnn.training.optim import build_optimizer, build_param_groups, build_scheduler, lr_factor
from swin_maskrcnn.training.config import OptimConfig

KEYS = ["absolute_pos_embed", "relative_position_bias_table", "norm"]


def group_names(model, keys) -> tuple[list[str], list[str]]:
    """(names with decay, names without) of the groups the optimizer is built from."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = {g["group_name"]: [name_of[id(p)] for p in g["params"]] for g in build_param_groups(model, 0.05, keys)}
    return groups.get("decay", []), groups.get("no_decay", [])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SwinMaskRCNN(tiny_model_config(num_classes=2))


def test_no_decay_group_is_substring_match(model):
    names = {n for n, _ in model.named_parameters()}
    decay, no_decay = group_names(model, KEYS)
    must_skip = [
        "backbone.norm0.weight",
        "backbone.norm3.bias",
        "backbone.patch_embed.norm.weight",
        "backbone.stages.0.downsample.norm.weight",
        "backbone.stages.0.blocks.0.norm1.weight",
        "backbone.stages.0.blocks.0.norm2.bias",
        "backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table",
    ]
    must_decay = [
        "backbone.stages.0.blocks.0.attn.w_msa.qkv.weight",
        "backbone.stages.0.blocks.0.attn.w_msa.qkv.bias",  # biases keep decay (mmdet)
        "backbone.patch_embed.projection.bias",
        "neck.lateral_convs.0.conv.bias",
        "rpn_head.rpn_cls.weight",
        "roi_head.bbox_head.fc_cls.bias",
        "roi_head.mask_head.conv_logits.weight",
    ]
    for n in must_skip + must_decay:
        assert n in names, f"{n} is not a parameter name of the model any more"
    assert set(must_skip) <= set(no_decay)
    assert set(must_decay) <= set(decay)
    # exactly the names containing a key, and every trainable parameter exactly once
    assert set(no_decay) == {n for n in names if any(k in n for k in KEYS)}
    assert sorted(decay + no_decay) == sorted(names)
    # every LayerNorm parameter is in no_decay
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert f"{mod_name}.weight" in no_decay and f"{mod_name}.bias" in no_decay


def test_optimizer_groups(model):
    opt = build_optimizer(model, OptimConfig())
    assert isinstance(opt, torch.optim.AdamW)
    wds = {g["group_name"]: g["weight_decay"] for g in opt.param_groups}
    assert wds == {"decay": 0.05, "no_decay": 0.0}
    assert all(g["lr"] == 1e-4 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(in_opt)


def test_frozen_parameters_are_excluded():
    m = SwinMaskRCNN(tiny_model_config(num_classes=2, frozen_stages=1))
    frozen = {id(p) for p in m.parameters() if not p.requires_grad}
    assert frozen  # patch_embed + stage 0 + norm0
    opt = build_optimizer(m, OptimConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not (in_opt & frozen)
    assert in_opt == {id(p) for p in m.parameters() if p.requires_grad}


def test_sgd(model):
    opt = build_optimizer(model, OptimConfig(type="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD)
    assert {g["group_name"]: g["weight_decay"] for g in opt.param_groups} == {"decay": 1e-4, "no_decay": 0.0}
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)


def _run_schedule(cfg: OptimConfig, n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "group_name": "decay"}], lr=cfg.lr)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])  # lr used by this optimizer step
        opt.step()
        sched.step()
    return lrs


def test_multistep_schedule_closed_form():
    cfg = OptimConfig(lr=1e-4, warmup_iters=10, warmup_start_factor=0.001, milestones=[30, 40], gamma=0.1, max_steps=50)
    lrs = _run_schedule(cfg, 50)
    lr = 1e-4
    assert lrs[0] == pytest.approx(lr * 0.001)
    # mmengine LinearLR(begin=0, end=W): linear from start_factor at 0 to 1 at step W - 1
    assert lrs[5] == pytest.approx(lr * (0.001 + 0.999 * 5 / 9))
    assert lrs[9] == pytest.approx(lr)  # warmup end
    assert lrs[10] == pytest.approx(lr) and lrs[29] == pytest.approx(lr)
    assert lrs[30] == pytest.approx(lr * 0.1)  # first milestone
    assert lrs[39] == pytest.approx(lr * 0.1)
    assert lrs[40] == pytest.approx(lr * 0.01)  # second milestone
    assert lrs[49] == pytest.approx(lr * 0.01)
    for t, v in enumerate(lrs):
        assert v == pytest.approx(lr * lr_factor(t, cfg))


def test_mmdet_1x_values_closed_form():
    cfg = OptimConfig()  # defaults are the 1x recipe
    f = lambda t: lr_factor(t, cfg)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(1) == pytest.approx(0.002)  # 0.001 + 0.999 / 999
    assert f(999) == pytest.approx(1.0)
    assert f(58639) == pytest.approx(1.0)
    assert f(58640) == pytest.approx(0.1)
    assert f(80629) == pytest.approx(0.1)
    assert f(80630) == pytest.approx(0.01)
    assert f(87959) == pytest.approx(0.01)


def test_cosine_schedule_closed_form():
    cfg = OptimConfig(lr=1e-3, warmup_iters=5, warmup_start_factor=0.1, schedule="cosine", min_lr=1e-5, max_steps=25)
    lrs = _run_schedule(cfg, 26)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-3)  # cosine starts at lr
    mid = 5 + 10
    assert lrs[mid] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[25] == pytest.approx(1e-5)  # min_lr at max_steps
    assert all(a >= b - 1e-15 for a, b in zip(lrs[5:], lrs[6:]))  # monotone after warmup


def test_no_warmup():
    cfg = OptimConfig(warmup_iters=0, milestones=[3], max_steps=5)
    assert [lr_factor(t, cfg) for t in range(5)] == pytest.approx([1, 1, 1, 0.1, 0.1])


def test_swin_v2_bias_mlp_and_logit_scale_get_no_decay_by_default():
    """The Swin V2 code trains cpb_mlp and logit_scale without weight decay; the default keys do too."""
    v2 = SwinMaskRCNN(tiny_model_config(num_classes=2, backbone_version=2))
    groups = {g["group_name"]: {id(p) for p in g["params"]} for g in build_param_groups(v2, 0.05, OptimConfig().no_decay_keys)}
    special = [p for n, p in v2.named_parameters() if "cpb_mlp" in n or "logit_scale" in n]
    assert len(special) == 4 * 4  # 4 blocks x (cpb_mlp.0.weight, cpb_mlp.0.bias, cpb_mlp.2.weight, logit_scale)
    assert {id(p) for p in special} <= groups["no_decay"] and not {id(p) for p in special} & groups["decay"]
