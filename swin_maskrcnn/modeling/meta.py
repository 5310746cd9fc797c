"""What a model knows about its classes beside its weights: :class:`ModelMeta`.

Declared on :class:`~swin_maskrcnn.modeling.detector.SwinMaskRCNN` (``model.meta``) with the
defaults of a model that was never told its data set (names "0".."C-1", no dataset category ids);
:func:`~swin_maskrcnn.checkpoint.loader.load_checkpoint` fills it from the checkpoint. Per-model
data that predictions need beside the config lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["ModelMeta"]


@dataclass
class ModelMeta:
    """``class_names``: label i -> name. ``label_to_cat_id``: label i -> the data set's category id,
    None when unknown (an mmdet file, a model built in code)."""

    class_names: list[str] = field(default_factory=list)
    label_to_cat_id: Optional[dict[int, int]] = None

    @classmethod
    def default(cls, num_classes: int) -> "ModelMeta":
        """Names "0".."C-1", no category ids."""
        return cls([str(i) for i in range(num_classes)], None)

    def check(self, num_classes: int) -> None:
        """ValueError unless there is one name per class."""
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

    def category_ids(self) -> dict[int, int]:
        """label -> category id for results files: the data set's ids, else label + 1 (COCO's ids start at 1)."""
        if self.label_to_cat_id is not None:
            return dict(self.label_to_cat_id)
        return {i: i + 1 for i in range(len(self.class_names))}
