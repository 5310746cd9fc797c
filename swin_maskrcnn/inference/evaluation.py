"""``evaluate --slice`` / ``--tta``: COCO results of sliced / augmented prediction against the
full-resolution ground truth (the images are read at their own size, never resized as a whole;
ground-truth masks are not decoded here, COCOeval reads the json)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .instances import crop_rle
from .sliced import predict_instances
from .tiling import SliceConfig
from .tta import TTAConfig

__all__ = ["predict_coco_results_large"]


def predict_coco_results_large(
    model: torch.nn.Module,
    dataset: Any,
    indices: Sequence[int],
    slicing: Optional[SliceConfig],
    tta: Optional[TTAConfig],
    test_scale: Optional[tuple[int, int]] = None,
    precision: str = "fp32",
    progress: bool = False,
    score_thr: float = 0.05,
) -> tuple[list[dict], list[int], list[int]]:
    """(results, image ids, predictions per image above ``score_thr``) as
    :func:`swin_maskrcnn.evaluation.predict_coco_results`, each image predicted by
    :func:`~swin_maskrcnn.inference.sliced.predict_instances` (all merged detections are kept: set
    COCOeval's maxDets to the densest image's object count)."""
    from tqdm.auto import tqdm

    from ..evaluation import _find_coco_dataset
    from ..modeling.acceleration import inference_model

    base = _find_coco_dataset(dataset)
    was_training = model.training
    model.eval()
    runner = inference_model(model, precision)  # a bf16 copy made once, not per image
    thr = float(model.cfg.roi.mask_thr)
    results: list[dict] = []
    image_ids: list[int] = []
    counts: list[int] = []
    try:
        with tqdm(total=len(indices), desc="evaluate", disable=not progress, leave=False) as bar:
            for i in indices:
                image = base.load_image(i)
                img_id = int(base.img_ids[i])
                h, w = image.shape[:2]
                inst = predict_instances(runner, image, slicing, tta, test_scale=test_scale, precision=precision,
                                         progress=progress)
                for box, score, label, crop, win in zip(inst.boxes.tolist(), inst.scores.tolist(), inst.labels.tolist(),
                                                        inst.binary_crops(thr), inst.windows.tolist()):
                    results.append({"image_id": img_id, "category_id": int(base.label_to_cat_id[int(label)]),
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score),
                                    "segmentation": crop_rle(crop, win, h, w)})
                image_ids.append(img_id)
                counts.append(int((inst.scores >= score_thr).sum()))
                bar.update(1)
    finally:
        model.train(was_training)
    return results, image_ids, counts
