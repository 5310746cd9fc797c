"""TrainConfig: every shipped YAML validates, errors name the dotted key, overrides, round trip,
and the num_classes start-up check."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from swin_maskrcnn.modeling.config import LossConfig, tiny_model_config
from swin_maskrcnn.training.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
# demo.yaml is a recipe (a TrainConfig plus a `demo:` section read by swin_maskrcnn.apps.demo); tests/apps/test_demo.py
# validates it through the demo's own loader.
FULL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "losses" not in p.parts and p.name != "demo.yaml")
LAYER_CONFIGS = sorted((CONFIGS / "losses").glob("*.yaml"))
BASE = CONFIGS / "swin_t_coco_1x.yaml"


def test_config_files_present():
    names = {p.name for p in FULL_CONFIGS}
    assert {"swin_t_coco_1x.yaml", "swin_t_coco_3x.yaml", "swin_s_coco_3x.yaml"} <= names
    assert (CONFIGS / "losses" / "seed.yaml") in LAYER_CONFIGS


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("path", FULL_CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    # what is saved with a run reads back as the same config (dump_config / config_from_dict round trip)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    if path.name.endswith("_coco_1x.yaml") or path.name.endswith("_coco_3x.yaml"):
        assert cfg.data.train_ann.startswith("data/coco/")  # placeholders the user overrides


@pytest.mark.parametrize("layer", LAYER_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("path", FULL_CONFIGS, ids=lambda p: p.name)
def test_every_layer_applies_to_every_config(path, layer):
    cfg = load_config(path, layers=[layer])
    # every value the layer sets is in the resolved config (none is dropped by the merge)
    resolved = cfg.model_dump(mode="json")
    for key, value in _leaves(yaml.safe_load(layer.read_text()) or {}):
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == (list(value) if isinstance(value, tuple) else value), key


def test_1x_is_mmdet_recipe():
    c = load_config(BASE)
    o = c.optim
    assert (o.type, o.lr, tuple(o.betas), o.weight_decay) == ("adamw", 1e-4, (0.9, 0.999), 0.05)
    assert o.no_decay_keys == ["absolute_pos_embed", "relative_position_bias_table", "norm", "learned_loss_weights"]
    assert (o.warmup_iters, o.warmup_start_factor) == (1000, 0.001)
    # 7330 steps per epoch (ceil(117266 images / batch 16)): milestones at epochs 8 and 11 of 12
    assert o.milestones == [58640, 80630]
    assert o.max_steps == 87960
    assert (o.schedule, o.gamma) == ("multistep", 0.1)
    assert c.model.drop_path_rate == 0.2 and c.model.variant == "swin_t" and c.model.num_classes == 80
    assert tuple(c.data.scale) == (1333, 800) and c.data.flip_prob == 0.5 and c.data.batch_size == 2
    assert c.data.transforms == "1x"
    assert c.runtime.devices == 8
    assert c.model.losses.clip_grad_norm is None  # mmdet clips nothing


def test_3x_configs():
    t = load_config(CONFIGS / "swin_t_coco_3x.yaml")
    assert t.data.transforms == "ms_crop_3x" and t.optim.max_steps == 36 * 7330
    assert t.optim.milestones == [27 * 7330, 33 * 7330]
    s = load_config(CONFIGS / "swin_s_coco_3x.yaml")
    assert s.model.variant == "swin_s" and s.model.drop_path_rate == 0.2
    assert s.optim.milestones == t.optim.milestones and s.data.transforms == "ms_crop_3x"


def test_coco_recipes_pin_mmdet_losses():
    # the COCO recipes reproduce mmdet, so they pin its losses over the library's preset defaults
    for name in ("swin_t_coco_1x.yaml", "swin_t_coco_3x.yaml", "swin_s_coco_3x.yaml"):
        assert load_config(CONFIGS / name).model.losses == LossConfig.mmdet(), name


def test_loss_defaults_are_the_seed_preset_and_mmdet_layer_restores_mmdet():
    # LossConfig() == the design's preset file; configs/losses/mmdet.yaml == LossConfig.mmdet()
    nuclei = CONFIGS / "nuclei.yaml"
    assert load_config(nuclei).model.losses == LossConfig()
    assert load_config(nuclei, layers=[CONFIGS / "losses" / "seed.yaml"]).model.losses == LossConfig()
    mm = load_config(nuclei, layers=[CONFIGS / "losses" / "mmdet.yaml"]).model.losses
    assert mm == LossConfig.mmdet() and mm != LossConfig()
    assert (mm.rpn_cls_pos_weight, mm.roi_cls_pos_weight, mm.clip_grad_norm) == (1.0, 1.0, None)
    # only the three documented fields differ between the two
    diff = {k for k, v in LossConfig().model_dump().items() if mm.model_dump()[k] != v}
    assert diff == {"rpn_cls_pos_weight", "roi_cls_pos_weight", "clip_grad_norm"}


def test_seed_losses_layer():
    c = load_config(BASE, layers=[CONFIGS / "losses" / "seed.yaml"])
    lo = c.model.losses
    assert (lo.rpn_cls_pos_weight, lo.roi_cls_pos_weight, lo.clip_grad_norm) == (5.0, 3.0, 10.0)
    assert (lo.rpn_loss_cls_weight, lo.rpn_loss_bbox_weight, lo.roi_loss_cls_weight,
            lo.roi_loss_bbox_weight, lo.roi_loss_mask_weight) == (1.0,) * 5
    # the rest of the config is untouched
    assert c.optim == load_config(BASE).optim


def test_extends_in_user_yaml(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        f"extends: [{BASE}, {CONFIGS / 'losses' / 'seed.yaml'}]\n"
        "model: {num_classes: 3}\noptim: {lr: 2.0e-4}\n"
    )
    c = load_config(user)
    assert c.model.num_classes == 3 and c.optim.lr == 2e-4
    assert c.model.losses.rpn_cls_pos_weight == 5.0 and c.model.variant == "swin_t"


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_overrides_apply_nested():
    c = load_config(
        BASE,
        [
            "optim.lr=2e-4",
            "data.scale=[1024, 640]",
            "model.roi.score_thr=0.3",
            "model.losses.clip_grad_norm=5",
            "runtime.devices=1",
            "runtime.max_val_images=null",
            "data.val_ann=null",
            "data.val_images=null",
        ],
    )
    assert c.optim.lr == 2e-4
    assert tuple(c.data.scale) == (1024, 640)
    assert c.model.roi.score_thr == 0.3
    assert c.model.losses.clip_grad_norm == 5.0
    assert c.runtime.devices == 1
    assert c.data.val_ann is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.losses.rpn_cls_pos_wieght=2", "model.losses.rpn_cls_pos_wieght"),
        ("optim.lrr=1", "optim.lrr"),
        ("runtime.collapse.windw=3", "runtime.collapse.windw"),
        ("nosuchsection.x=1", "nosuchsection"),
    ],
)
def test_unknown_key_names_dotted_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(BASE, [override])
    assert key in str(e.value) and "unknown key" in str(e.value)


def test_unknown_key_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {BASE}\nmodel:\n  rpn:\n    nms_iouu: 0.5\n")
    with pytest.raises(ConfigError, match=r"model\.rpn\.nms_iouu"):
        load_config(bad)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.losses.rpn_cls_pos_weight=-1", "model.losses.rpn_cls_pos_weight"),
        ("data.flip_prob=1.5", "data.flip_prob"),
        ("optim.warmup_start_factor=0", "optim.warmup_start_factor"),
        ("runtime.precision=fp8", "runtime.precision"),
        ("model.roi.score_thr=2", "model.roi.score_thr"),
        ("data.batch_size=0", "data.batch_size"),
        ("optim.max_steps=1000", "optim.milestones"),
        ("optim.milestones=[500, 100]", "optim.milestones"),
        ("runtime.val_max_dets=[1, 10]", "runtime.val_max_dets"),
        ("runtime.strategy=ddp_spawn", "runtime.strategy"),
        ("runtime.max_minutes=0", "runtime.max_minutes"),
    ],
)
def test_out_of_range_names_dotted_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(BASE, [override])
    assert key in str(e.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(BASE, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=1"])


def test_resolved_config_round_trips(tmp_path):
    c = load_config(BASE, ["optim.lr=3e-4", "model.num_classes=5"], layers=[CONFIGS / "losses" / "seed.yaml"])
    path = save_config(c, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert again == c
    assert dump_config(again) == dump_config(c)


def test_tiny_config_from_dict_round_trip(tmp_path):
    c = config_from_dict(
        {"model": tiny_model_config(num_classes=2).model_dump(mode="json"),
         "data": {"train_ann": "a.json", "train_images": "imgs"},
         "optim": {"max_steps": 10, "milestones": [5]}}
    )
    assert load_config(save_config(c, tmp_path / "c.yaml")) == c


def test_num_classes_mismatch_is_a_startup_error(tmp_path):
    from conftest import make_tiny_coco

    from swin_maskrcnn.training.train import build_datasets

    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=3)
    cfg = load_config(BASE, [f"data.train_ann={ann}", f"data.train_images={imgs}", "data.val_ann=null",
                             "data.val_images=null", "model.num_classes=3"])
    with pytest.raises(ConfigError) as e:
        build_datasets(cfg)
    msg = str(e.value)
    assert "model.num_classes=3" in msg and "2 categories" in msg


@pytest.mark.parametrize("max_instances, runtime, expected", [
    (None, {}, [1, 10, 100]),                                  # default: COCO's maxDets
    (400, {}, [1, 100, 400]),                                  # follows max_instances, as evaluate does
    (50, {}, [1, 10, 50]),
    (400, {"val_max_dets": [1, 10, 100]}, [1, 10, 100]),       # given explicitly: kept
])
def test_val_max_dets_follows_max_instances(tmp_path, max_instances, runtime, expected):
    model = {} if max_instances is None else {"max_instances": max_instances}
    c = config_from_dict({"model": model, "data": {"train_ann": "a.json", "train_images": "imgs"}, "runtime": runtime})
    assert c.runtime.val_max_dets == expected
    assert c.model.eval_max_dets() in (None, [1, 100, 400], [1, 10, 50])
    assert load_config(save_config(c, tmp_path / "c.yaml")).runtime.val_max_dets == expected


def test_val_max_dets_follow_does_not_change_a_shared_runtime_section():
    from swin_maskrcnn.training.config import RuntimeConfig

    rt = RuntimeConfig()
    c = config_from_dict({"model": {"max_instances": 400}, "data": {"train_ann": "a.json", "train_images": "imgs"},
                          "runtime": rt})
    assert c.runtime.val_max_dets == [1, 100, 400] and rt.val_max_dets == [1, 10, 100]
