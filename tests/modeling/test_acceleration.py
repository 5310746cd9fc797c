"""torch.compile of the dense part and bf16 inference autocast (swin_maskrcnn.modeling.acceleration)."""
from __future__ import annotations

import pytest
import torch

from swin_maskrcnn import SwinMaskRCNN
from swin_maskrcnn.modeling.acceleration import compile_dense, inference_autocast
from swin_maskrcnn.modeling.config import COMPILE_MODES
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.errors import ConfigError
from swin_maskrcnn.training.config import config_from_dict


def tiny_model() -> SwinMaskRCNN:
    torch.manual_seed(0)
    return SwinMaskRCNN(tiny_model_config()).eval()


def test_compile_dense_rejects_unknown_mode_and_none_is_a_no_op():
    m = tiny_model()
    with pytest.raises(ValueError, match="unknown torch.compile mode 'fast'"):
        compile_dense(m, "fast")
    assert compile_dense(m, None) is m
    assert m.backbone._compiled_call_impl is None
    with pytest.raises(TypeError, match="'backbone'"):
        compile_dense(torch.nn.Linear(2, 2), "default")


def test_compile_dense_keeps_state_dict_keys():
    m = tiny_model()
    keys = list(m.state_dict())
    compile_dense(m, "default")
    assert m.backbone._compiled_call_impl is not None and m.neck._compiled_call_impl is not None
    assert list(m.state_dict()) == keys  # checkpoints unaffected (no _orig_mod. prefix)


@pytest.mark.slow
def test_compiled_dense_part_equals_eager_on_two_sizes():
    """Compiles (minutes on a busy 2-core CPU): backbone + FPN outputs equal eager within fp32 noise."""
    eager = tiny_model()
    compiled = tiny_model()
    compile_dense(compiled, "default")
    for hw in ((128, 160), (96, 224)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            for a, b in zip(eager.neck(eager.backbone(x)), compiled.neck(compiled.backbone(x))):
                torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_inference_autocast_bf16_runs_the_model_in_bf16_and_fp32_is_a_no_op():
    m = tiny_model()
    x = torch.rand(3, 96, 128)
    seen = []
    hook = m.backbone.stages[0].blocks[0].attn.w_msa.qkv.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    with torch.no_grad():
        with inference_autocast("cpu", "fp32"):
            m([x])
        with inference_autocast(torch.device("cpu"), "bf16"):
            (out,) = m([x])
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert out["masks"].dtype == torch.bool and out["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="precision"):
        inference_autocast("cpu", "fp16")  # type: ignore[arg-type]


def test_runtime_compile_option_takes_the_modes_compile_dense_knows():
    data = {"train_ann": "a.json", "train_images": "images"}
    assert config_from_dict({"data": data}).runtime.compile is None  # eager by default
    for mode in COMPILE_MODES:  # the config accepts exactly the modes the model's compile step knows
        assert config_from_dict({"data": data, "runtime": {"compile": mode}}).runtime.compile == mode
    with pytest.raises(ConfigError, match=r"runtime\.compile: .*max-autotune.*\(got 'fast'\)"):
        config_from_dict({"data": data, "runtime": {"compile": "fast"}})
