"""bf16-mixed training on the CPU trains the convolutions in channels_last
(``modeling.acceleration.channels_last_convolutions``): when it applies, that it changes the layout
and not the values, and that such a run writes ordinary (contiguous) checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from swin_maskrcnn.checkpoint.loader import read_checkpoint
from swin_maskrcnn.modeling.acceleration import CONV_MODULES, channels_last_convolutions
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.detector import SwinMaskRCNN
from swin_maskrcnn.training.train import build_model, train, uses_channels_last

from conftest import make_tiny_coco, tiny_train_config

AMX = frozenset({"avx512f", "amx_tile", "amx_bf16"})
AVX2 = frozenset({"avx", "avx2", "fma"})


def _sub(model: nn.Module, name: str) -> nn.Module:
    for attr in name.split("."):
        model = getattr(model, attr)
    return model


def _nhwc(w: torch.Tensor) -> bool:
    """channels_last strides (a 1x1 kernel's are the same bytes either way; then only the strides tell)."""
    return w.is_contiguous(memory_format=torch.channels_last) and (w.shape[2] * w.shape[3] == 1 or not w.is_contiguous())


def _conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for name in CONV_MODULES for m in _sub(model, name).modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("precision, accelerator, flags, expected", [
    ("bf16-mixed", "cpu", None, True),
    ("32-true", "cpu", AMX, False),
    ("auto", "cpu", AMX, True),      # auto -> bf16-mixed on an AMX CPU
    ("auto", "cpu", AVX2, False),    # auto -> 32-true without native bf16
    ("bf16-mixed", "cuda", None, False),  # GPU runs keep NCHW (unmeasured there)
])
def test_when_channels_last_applies(precision, accelerator, flags, expected):
    assert uses_channels_last(precision, accelerator, flags) is expected


def test_layout_changes_and_values_do_not():
    torch.manual_seed(0)
    model = SwinMaskRCNN(tiny_model_config(num_classes=2, fpn_channels=32, mask_head_channels=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = SwinMaskRCNN(tiny_model_config(num_classes=2, fpn_channels=32, mask_head_channels=16))
    ref.load_state_dict(before)
    channels_last_convolutions(model)
    weights = _conv_weights(model)
    assert len(weights) >= 10  # laterals, FPN convs, RPN conv + heads, mask convs, deconv, logits
    assert all(_nhwc(w) for w in weights)
    assert sum(w.shape[2] > 1 and not w.is_contiguous() for w in weights) >= 5  # the 3x3 / 2x2 kernels moved
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # values untouched
    assert model.backbone.out_memory_format == torch.channels_last
    # the same losses from the same batch (other kernels: equal to float rounding)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=g)]
    targets = [dict(boxes=torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]),
                    labels=torch.tensor([0, 1]),
                    masks=torch.zeros(2, 96, 128, dtype=torch.uint8).index_fill_(1, torch.arange(20, 70), 1))]
    torch.manual_seed(2)
    a = model(images, targets)
    torch.manual_seed(2)
    b = ref(images, targets)
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]) and a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, a[k], b[k])
    feats = model.backbone(images[0][None])
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)


def test_build_model_converts_only_bf16_mixed_cpu_runs(tmp_path):
    ann, imgs = make_tiny_coco(tmp_path / "coco", n_images=2)
    bf16 = build_model(tiny_train_config(ann, imgs, tmp_path / "runs", "a", precision="bf16-mixed"), None)
    fp32 = build_model(tiny_train_config(ann, imgs, tmp_path / "runs", "b", precision="32-true"), None)
    assert all(_nhwc(w) for w in _conv_weights(bf16))
    assert all(w.is_contiguous() for w in _conv_weights(fp32))
    assert not all(w.is_contiguous() for w in _conv_weights(bf16))
    assert fp32.backbone.out_memory_format == torch.contiguous_format


def test_bf16_mixed_run_trains_and_writes_contiguous_checkpoints(tmp_path):
    ann, imgs = make_tiny_coco(tmp_path / "coco", n_images=4)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "bf16", max_steps=6, precision="bf16-mixed",
                            val_every_n_steps=6, checkpoint_every_n_steps=6, probe_every_n_steps=0)
    summary = train(cfg)
    assert summary["global_step"] == 6
    state, _ = read_checkpoint(Path(summary["final_model"]))
    assert all(v.is_contiguous() for v in state.values())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the final model loads into a plain model and predicts
    model = SwinMaskRCNN(cfg.model)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model.predict([torch.rand(3, 128, 128)])
    assert len(out) == 1


def test_auto_precision_is_resolved_and_logged_once_per_run(tmp_path, caplog):
    """``runtime.precision: auto`` is resolved once by ``train()`` for the model's layout and the Trainer."""
    ann, imgs = make_tiny_coco(tmp_path / "coco", n_images=2)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "auto", max_steps=2, precision="auto",
                            val_every_n_steps=2, checkpoint_every_n_steps=2, probe_every_n_steps=0)
    with caplog.at_level("INFO", logger="swin_maskrcnn"):
        train(cfg)
    assert sum("precision auto ->" in r.getMessage() for r in caplog.records) == 1
