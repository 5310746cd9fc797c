"""Make ``tests/fixtures/mmdet_tiny_seed11_ignore``: mmdet 3.3's training losses and samples with ignore regions.

Runs the mmdet_reference tool (``../shared/tools/mmdet_reference/make_fixture.py``, mmdet's own model
code) with exactly the command of ``tests/fixtures/mmdet_tiny_seed11`` plus
``model.train_cfg.{rpn,rcnn}.assigner.ignore_iof_thr=0.5``, and gives mmdet's ``LoadAnnotations``
per image extra instances with ``ignore_flag=1`` (``PackDetInputs`` turns them into
``ignored_instances``, which the RPN and RoI assigners receive). The weights and images are those
of the seed 11 fixture (images checked here; the weights are seed 11's draw, with a classifier
bias calibrated on this machine, so the checkpoint is committed again), and ``train_ignore.pt``
holds the images, the ignore boxes, mmdet's training record (GT as the loss saw it, training proposals, sampled indices per
stage and image, losses) and mmdet's ``MaxIoUAssigner`` on random boxes (direct cases).

Run with the mmdet venv's interpreter, from the repository root::

    /work/mmdet-venv/bin/python benchmarks/make_ignore_fixture.py \
        --out tests/fixtures/mmdet_tiny_seed11_ignore   [--tool ../shared/tools/mmdet_reference]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

THR = 0.5
SEED11_ARGS = (
    "--model tiny --seed 11 --images 2 --sizes 96x124,100x80 --resize none --target-dets 3,8 --threads 2 "
    "--cfg-options model.backbone.embed_dims=8 model.neck.out_channels=24 model.rpn_head.in_channels=24 "
    "model.rpn_head.feat_channels=24 model.roi_head.bbox_roi_extractor.out_channels=24 "
    "model.roi_head.bbox_head.in_channels=24 model.roi_head.bbox_head.fc_out_channels=32 "
    "model.roi_head.mask_roi_extractor.out_channels=24 model.roi_head.mask_head.in_channels=24 "
    "model.roi_head.mask_head.conv_out_channels=24"
).split()
IGNORE_ARGS = [f"model.train_cfg.rpn.assigner.ignore_iof_thr={THR}", f"model.train_cfg.rcnn.assigner.ignore_iof_thr={THR}"]


def ignore_boxes_for(scene: dict) -> list[list[float]]:
    """Per image: a region holding GT 0 (so its anchors and proposals are ignored while GT 0 itself,
    added as a proposal, is not), and the top-left quarter of the image (background and parts of
    other objects)."""
    x1, y1, x2, y2 = scene["boxes"][0]
    h, w = scene["h"], scene["w"]
    return [
        [max(0.0, x1 - 3), max(0.0, y1 - 3), min(float(w), x2 + 3), min(float(h), y2 + 3)],
        [0.0, 0.0, round(w / 4.0), round(h / 4.0)],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = Path(__file__).resolve().parents[1]
    tool = next((p for p in (repo.parent / "shared", Path("/work/shared")) if p.is_dir()), repo.parent / "shared")
    ap.add_argument("--tool", default=str(tool / "tools" / "mmdet_reference"))
    ap.add_argument("--out", default="tests/fixtures/mmdet_tiny_seed11_ignore")
    ap.add_argument("--seed11", default="tests/fixtures/mmdet_tiny_seed11", help="the fixture whose weights are reused")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.tool))
    import make_fixture as mf  # noqa: E402  (mmdet's environment; installs the mmcv._ext shim)
    import numpy as np
    import pycocotools.mask as mask_util
    import torch
    from mmengine.structures import InstanceData
    from mmdet.models.task_modules.assigners import MaxIoUAssigner

    recorded: dict = {}

    def make_data(scenes, pipeline, with_gt):
        transforms = [mf.TRANSFORMS.build(copy.deepcopy(t)) for t in pipeline]
        inputs, samples = [], []
        for i, sc in enumerate(scenes):
            res = dict(img=np.ascontiguousarray(sc["rgb"][..., ::-1]), img_id=i)
            if with_gt:
                res["instances"] = []
                for box, label, m in zip(sc["boxes"], sc["labels"], sc["masks"]):
                    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    res["instances"].append(dict(bbox=list(box), bbox_label=int(label), ignore_flag=0, mask=rle))
                for box in ignore_boxes_for(sc):
                    m = np.zeros((sc["h"], sc["w"]), np.uint8)
                    m[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 1
                    rle = mask_util.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    res["instances"].append(dict(bbox=box, bbox_label=0, ignore_flag=1, mask=rle))
            packed = mf.run_pipeline(transforms, res)
            inputs.append(packed["inputs"])
            samples.append(packed["data_samples"])
            if with_gt:
                ign = packed["data_samples"].ignored_instances.bboxes
                ign = ign.tensor if hasattr(ign, "tensor") else ign
                recorded.setdefault("ignored_instances", []).append(ign.clone().float())
                recorded.setdefault("rgb", []).append(torch.from_numpy(sc["rgb"].copy()))
        return dict(inputs=inputs, data_samples=samples)

    mf.make_data = make_data
    with tempfile.TemporaryDirectory() as tmp:
        mf.main(["--out", tmp] + SEED11_ARGS + IGNORE_ARGS)
        out = torch.load(Path(tmp) / "outputs.pt", weights_only=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        # the classifier-bias calibration of make_fixture.py can land elsewhere on another CPU / opencv
        # build, so the weights are not always seed 11's: this fixture carries its own checkpoint
        import shutil
        shutil.copy(Path(tmp) / "checkpoint.pth", Path(args.out) / "checkpoint.pth")
    ref_out = torch.load(Path(args.seed11) / "outputs.pt", weights_only=True)
    for im, rgb in zip(ref_out["images"], recorded["rgb"]):
        assert torch.equal(im["rgb_uint8"], rgb), "images differ from seed 11"
    assert out["meta"]["train_cfg"]["rpn"]["assigner"]["ignore_iof_thr"] == THR
    assert out["meta"]["train_cfg"]["rcnn"]["assigner"]["ignore_iof_thr"] == THR

    # mmdet's MaxIoUAssigner on random boxes: RPN and R-CNN settings, several thresholds
    g = torch.Generator().manual_seed(0)
    cases = []
    for k in range(12):
        def rand_boxes(n, size):
            xy = torch.rand(n, 2, generator=g) * 100
            wh = 4 + torch.rand(n, 2, generator=g) * size
            return torch.cat([xy, xy + wh], 1)
        cand, gt, ign = rand_boxes(300, 40), rand_boxes(1 + k % 5, 40), rand_boxes(k % 4, 60)
        labels = torch.randint(0, 5, (gt.shape[0],), generator=g)
        pos, neg, mpi = (0.7, 0.3, 0.3) if k % 2 else (0.5, 0.5, 0.5)
        thr = [0.5, 0.3, 0.8, -1.0][k % 4]
        a = MaxIoUAssigner(pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=mpi, match_low_quality=True,
                           ignore_iof_thr=thr)
        r = a.assign(InstanceData(priors=cand), InstanceData(bboxes=gt, labels=labels), InstanceData(bboxes=ign))
        cases.append(dict(candidates=cand, gt=gt, labels=labels, ignore=ign, pos_iou_thr=pos, neg_iou_thr=neg,
                          min_pos_iou=mpi, ignore_iof_thr=thr, gt_inds=r.gt_inds.clone(),
                          max_overlaps=r.max_overlaps.clone()))

    tr = out["train"]
    small = dict(
        ignore_iof_thr=THR,
        command="/work/mmdet-venv/bin/python benchmarks/make_ignore_fixture.py (make_fixture.py "
        + " ".join(SEED11_ARGS + IGNORE_ARGS) + ")",
        versions=out["meta"]["versions"],
        ignore_boxes=recorded["ignored_instances"],
        images=recorded["rgb"],
        train=dict(gt_instances=tr["gt_instances"], rpn_proposals=tr["rpn_proposals"], sampling=tr["sampling"],
                   losses=tr["losses"]),
        assigner_cases=cases,
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(small, Path(args.out) / "train_ignore.pt")
    print("losses with ignore regions:", {k: round(v, 6) for k, v in tr["losses"].items()})
    print("losses without (seed 11):  ", {k: round(v, 6) for k, v in ref_out["train"]["losses"].items()})
    for s, s0 in zip(tr["sampling"], ref_out["train"]["sampling"]):
        print(s["stage"], s["img"], "pos", len(s["pos_inds"]), "neg", len(s["neg_inds"]),
              "| seed11 pos", len(s0["pos_inds"]), "neg", len(s0["neg_inds"]))


if __name__ == "__main__":
    main()
