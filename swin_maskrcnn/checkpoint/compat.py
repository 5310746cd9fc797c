"""Files and configs written by earlier code: every rename of an older key, read in one place.

On the model of detectron2's ``config/compat.py``, keyed on the checkpoint format
:data:`~swin_maskrcnn.checkpoint.format.VERSION`: :data:`RENAMES` lists, per version, the renames
made while the format was at that version. A file stored with version ``v`` gets the renames of
every version ``>= v`` (it may predate all of them); each rename does nothing to a file already in
the new layout, so it is safe on new files of that version. A change that a rename on reading
cannot express bumps ``VERSION`` and gets a new entry.

Its readers: :func:`upgrade_state_dict` (weights: :func:`~.loader.read_checkpoint`, so
``load_model`` and a training init both see current names), :func:`upgrade_model_config` (the
stored model config, :func:`~.loader.load_checkpoint`), :func:`upgrade_train_config` and
:func:`upgrade_no_decay_keys` (a training config, from YAML or a checkpoint: ``TrainConfig`` and
``OptimConfig`` validation).

Renames at version 1:

* ``loss_balancer.*`` -> ``learned_loss_weights.*`` (weights; also in ``optim.no_decay_keys``);
* ``data.test_scale`` -> ``model.test_scale``, the one owner of the test resize (training config;
  a stored model config without ``test_scale`` takes the stored training config's).

One older name is read where it is declared instead: ``model.losses.dynamic_loss_weighting`` is a
validation alias of ``learned_loss_weights`` in ``modeling/config.py`` (``modeling/`` imports
nothing from ``checkpoint/``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from torch import Tensor

from .format import VERSION

log = logging.getLogger(__name__)

__all__ = ["RENAMES", "upgrade_state_dict", "upgrade_model_config", "upgrade_train_config", "upgrade_no_decay_keys"]

#: version -> what was renamed while the format was at that version (documentation and tests)
RENAMES: dict[int, tuple[str, ...]] = {
    1: ("state_dict loss_balancer.* -> learned_loss_weights.*",
        "optim.no_decay_keys loss_balancer -> learned_loss_weights",
        "data.test_scale -> model.test_scale"),
}
assert max(RENAMES) <= VERSION


def _applies(version: Optional[int], at: int) -> bool:
    """Whether the renames made at format version ``at`` apply to a file stored with ``version``
    (None: unknown, e.g. a training config from YAML: every rename applies)."""
    return version is None or int(version) <= at


def upgrade_state_dict(sd: Mapping[str, Tensor], version: Optional[int] = None) -> dict[str, Tensor]:
    """Weights with current key names."""
    out = dict(sd)
    if _applies(version, 1):
        old = "loss_balancer."
        out = {("learned_loss_weights." + k[len(old):] if k.startswith(old) else k): v for k, v in out.items()}
    return out


def upgrade_model_config(model_cfg: Mapping[str, Any], train_cfg: Optional[Mapping[str, Any]] = None,
                         version: Optional[int] = None) -> dict[str, Any]:
    """A stored model config with current keys; ``train_cfg`` is the training config stored beside it."""
    out = dict(model_cfg)
    if _applies(version, 1):
        data = (train_cfg or {}).get("data") or {}
        if "test_scale" not in out and "test_scale" in data:
            out["test_scale"] = data["test_scale"]
    return out


def upgrade_no_decay_keys(keys: list[str], version: Optional[int] = None) -> list[str]:
    """``optim.no_decay_keys`` with current module names (called by ``OptimConfig``'s validation)."""
    if not _applies(version, 1):
        return keys
    return ["learned_loss_weights" if k == "loss_balancer" else k for k in keys]


def _as_pair(v: Any) -> Any:
    return None if v is None else tuple(v)


def upgrade_train_config(data: Any, version: Optional[int] = None) -> Any:
    """A training config mapping with current keys (anything else is returned as it is, for the
    validation to reject). Raises ValueError when ``data.test_scale`` and ``model.test_scale`` disagree."""
    if not isinstance(data, dict) or not _applies(version, 1):
        return data
    if not isinstance(data.get("data"), dict) or "test_scale" not in data["data"]:
        return data
    data = dict(data, data=dict(data["data"]))
    scale = data["data"].pop("test_scale")
    model = data.get("model")
    if hasattr(model, "model_dump"):
        model = model.model_dump()
    model = dict(model or {})
    if "test_scale" in model and _as_pair(model["test_scale"]) != _as_pair(scale):
        raise ValueError(
            f"data.test_scale={scale} and model.test_scale={model['test_scale']} disagree; "
            "the test scale belongs to model.test_scale (drop data.test_scale)"
        )
    log.warning("data.test_scale is deprecated: read as model.test_scale=%s", scale)
    model["test_scale"] = scale
    data["model"] = model
    return data
