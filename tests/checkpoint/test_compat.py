"""swin_maskrcnn.checkpoint.compat: the renames of older keys, keyed on the stored format version."""
from __future__ import annotations

import torch

from swin_maskrcnn.checkpoint.compat import (
    RENAMES,
    upgrade_model_config,
    upgrade_no_decay_keys,
    upgrade_state_dict,
    upgrade_train_config,
)
from swin_maskrcnn.checkpoint.format import VERSION


def test_renames_apply_up_to_the_version_they_were_made_at():
    old = {"loss_balancer.log_vars": torch.zeros(5), "backbone.x": torch.ones(1)}
    assert max(RENAMES) <= VERSION
    for version in (None, 0, 1):  # unknown, older, the version the rename was made at
        assert sorted(upgrade_state_dict(old, version)) == ["backbone.x", "learned_loss_weights.log_vars"]
    # a file of a later version is already in that layout: nothing is renamed (a key that happens to
    # carry an older name would then be a real mismatch, reported by the strict loader)
    assert sorted(upgrade_state_dict(old, 2)) == sorted(old)
    assert upgrade_no_decay_keys(["norm", "loss_balancer"], 1) == ["norm", "learned_loss_weights"]
    assert upgrade_no_decay_keys(["loss_balancer"], 2) == ["loss_balancer"]


def test_upgrades_leave_current_layouts_alone():
    sd = {"learned_loss_weights.log_vars": torch.zeros(5)}
    assert upgrade_state_dict(sd, 1) == sd
    cfg = {"num_classes": 2, "test_scale": [64, 64]}
    assert upgrade_model_config(cfg, {"data": {"test_scale": [1, 1]}}, 1) == cfg  # the model's own wins
    train = {"model": {"num_classes": 2}, "data": {"train_ann": "a.json"}}
    assert upgrade_train_config(train) == train


def test_test_scale_moves_from_data_to_model():
    out = upgrade_train_config({"model": {"num_classes": 2}, "data": {"train_ann": "a.json", "test_scale": [9, 8]}})
    assert out == {"model": {"num_classes": 2, "test_scale": [9, 8]}, "data": {"train_ann": "a.json"}}
    assert upgrade_model_config({"num_classes": 2}, {"data": {"test_scale": [9, 8]}}, 1)["test_scale"] == [9, 8]
